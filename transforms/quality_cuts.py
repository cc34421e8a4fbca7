"""Stage 2 (paper sections 3.1-3.2): the quality cuts; each rejected row keeps its first failed rule."""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from galaxiesml.cuts import PAPER_RULES, Rule, apply_cuts
from galaxiesml.funnel import count_by
from transforms.arrow import typed_outputs
from transforms.metrics import increment

REJECTED = "rejected"


class _Cut(beam.DoFn):
    def __init__(self, rules: tuple[Rule, ...]):
        self.rules = rules

    def process(self, table: pa.Table):
        for batch in table.to_batches():
            kept, rejected = apply_cuts(batch, self.rules)
            increment(count_by(rejected, "reason", "rejected"))
            if kept.num_rows:
                yield kept
            if rejected.num_rows:
                yield beam.pvalue.TaggedOutput(REJECTED, rejected)


class QualityCuts(beam.PTransform):
    """Typed rows -> {"kept", "rejected"} tables."""

    def __init__(self, rules: tuple[Rule, ...] = PAPER_RULES):
        super().__init__()
        self.rules = rules

    def expand(self, rows):
        outputs = rows | "ApplyCuts" >> beam.ParDo(_Cut(self.rules)).with_outputs(REJECTED, main="kept")
        return typed_outputs(outputs, **{REJECTED: pa.Table})
