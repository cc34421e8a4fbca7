"""Stage 5 of the catalog half: kept, rejected and duplicate rows as sharded Parquet, and the
funnel in summary.json (which fails the run if the rows do not balance)."""
from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquetBatched

from galaxiesml.funnel import count_by, merge_counts, summarize
from galaxiesml.schema import DUPLICATE_SCHEMA, KEPT_SCHEMA, REJECTED_SCHEMA
from transforms import arrow  # noqa: F401

OUTPUTS = {"kept": KEPT_SCHEMA, "rejected": REJECTED_SCHEMA, "duplicates": DUPLICATE_SCHEMA}


def catalog_prefix(output: str, name: str) -> str:
    """Where the shards of one catalog output go: <output>/catalog/<name>-SSSSS-of-NNNNN.parquet."""
    return FileSystems.join(output, "catalog", name)


def _write_summary(counts: dict, path: str, run: dict) -> dict:
    summary = {"funnel": summarize(counts), "run": run}
    with FileSystems.create(path) as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


class WriteCatalog(beam.PTransform):
    """{"kept", "rejected", "duplicates"} tables and the reader's "read_counts" -> Parquet shards
    and summary.json, which checks that the outputs account for every row read."""

    def __init__(self, output: str, run_info: dict):
        super().__init__()
        self.output = output
        self.run_info = run_info

    def expand(self, pcolls: dict):
        for name, schema in OUTPUTS.items():
            _ = pcolls[name] | f"Write {name}" >> WriteToParquetBatched(
                catalog_prefix(self.output, name), schema=schema, file_name_suffix=".parquet"
            )
        counted = (
            pcolls["read_counts"],
            pcolls["rejected"] | "Count rejected" >> beam.Map(count_by, "reason", "rejected"),
            pcolls["duplicates"]
            | "Count duplicates" >> beam.Map(count_by, "duplicate_key", "duplicates"),
            pcolls["kept"] | "Count kept" >> beam.Map(count_by, "split", "kept"),
        )
        return (
            counted
            | "All counts" >> beam.Flatten()
            | "Sum counts" >> beam.CombineGlobally(merge_counts)
            | "Write summary.json"
            >> beam.Map(_write_summary, FileSystems.join(self.output, "summary.json"), self.run_info)
        )
