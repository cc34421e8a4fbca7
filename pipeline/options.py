"""The job's options: one PipelineOptions subclass, so every standard Beam flag works beside them."""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from galaxiesml.catalog import DEFAULT_BATCH_ROWS
from galaxiesml.splits import check_fractions


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.6,0.2,0.2' -> (0.6, 0.2, 0.2), validated."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--split_fractions takes three numbers like 0.6,0.2,0.2, got {text!r}")
    return check_fractions(values)  # type: ignore[arg-type]


class GalaxiesMLOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("GalaxiesML")
        group.add_argument(
            "--catalog",
            help="catalog file or glob, on any Beam filesystem: HSC export CSV, CSV(.gz), FITS table "
            "or Parquet",
        )
        group.add_argument("--output", help="output directory (any Beam filesystem)")
        group.add_argument(
            "--split_seed", type=int, default=0, help="seed of the train/validation/test assignment"
        )
        group.add_argument(
            "--split_fractions",
            default="0.6,0.2,0.2",
            help="training,validation,testing fractions (the paper's 60/20/20 by default)",
        )
        group.add_argument(
            "--dedup_buckets",
            type=int,
            default=64,
            help="hash partitions of each dedup GroupByKey (more spreads the work over more workers)",
        )
        group.add_argument(
            "--catalog_batch_rows",
            type=int,
            default=DEFAULT_BATCH_ROWS,
            help="rows per Arrow batch when reading table files",
        )
