"""Optional stage after dedup: keep a deterministic, redshift-stratified subset of N galaxies
(a laptop-size build); the others are rejected with reason `mini_sample`."""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from galaxiesml.catalog import rejects_table
from galaxiesml.mini import select_mini
from transforms.arrow import typed_outputs
from transforms.metrics import increment

REJECTED = "rejected"
_KEYS = ["object_id", "specz_redshift"]


def _chosen_ids(keys: list[pa.Table], n: int, seed: int) -> pa.Array:
    if not keys:
        return pa.array([], pa.int64())
    table = pa.concat_tables(keys)
    ids = table.column("object_id").to_numpy()
    return pa.array(ids[select_mini(ids, table.column("specz_redshift").to_numpy(), n, seed)])


def _keep_chosen(rows: pa.Table, chosen: pa.Array, n: int):
    keep = pc.is_in(rows.column("object_id"), value_set=chosen)
    kept, dropped = rows.filter(keep), rows.filter(pc.invert(keep))
    if kept.num_rows:
        yield kept
    if dropped.num_rows:
        increment({"rejected.mini_sample": dropped.num_rows})
        reasons = ["mini_sample"] * dropped.num_rows
        details = [f"not among the {n} galaxies of the mini build"] * dropped.num_rows
        yield beam.pvalue.TaggedOutput(REJECTED, rejects_table(dropped, reasons, details))


class MiniSample(beam.PTransform):
    """Kept rows -> {"kept": the N chosen, "rejected": the rest}."""

    def __init__(self, n: int, seed: int = 0):
        super().__init__()
        self.n = n
        self.seed = seed

    def expand(self, rows):
        chosen = (
            rows
            | "Ids and redshifts" >> beam.Map(lambda t: t.select(_KEYS)).with_output_types(pa.Table)
            | "Gather" >> beam.combiners.ToList()
            | "Choose" >> beam.Map(_chosen_ids, self.n, self.seed)
        )
        outputs = rows | "Keep chosen" >> beam.FlatMap(
            _keep_chosen, beam.pvalue.AsSingleton(chosen), self.n
        ).with_outputs(REJECTED, main="kept")
        return typed_outputs(outputs, **{REJECTED: pa.Table})
