"""The catalog stages' outputs as sharded Parquet (kept, rejected, duplicate and failed rows), and
the funnel in summary.json, which fails the run if the rows do not balance."""
from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet, WriteToParquetBatched

from galaxiesml.funnel import merge_counts, summarize
from galaxiesml.schema import DUPLICATE_SCHEMA, FAILED_SCHEMA, KEPT_SCHEMA, REJECTED_SCHEMA
from galaxiesml.storage import created_atomically
from transforms import arrow  # noqa: F401

TABLE_OUTPUTS = {"kept": KEPT_SCHEMA, "rejected": REJECTED_SCHEMA, "duplicates": DUPLICATE_SCHEMA}


def catalog_prefix(output: str, name: str) -> str:
    """Where the shards of one catalog output go: <output>/catalog/<name>-SSSSS-of-NNNNN.parquet."""
    return FileSystems.join(output, "catalog", name)


class WriteCatalog(beam.PTransform):
    """{"kept", "rejected", "duplicates"} tables and "failed" records -> Parquet shards."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, pcolls: dict) -> dict:
        """Returns the written file names of each output."""
        written = {
            name: pcolls[name]
            | f"Write {name}"
            >> WriteToParquetBatched(catalog_prefix(self.output, name), schema=schema, file_name_suffix=".parquet")
            for name, schema in TABLE_OUTPUTS.items()
        }
        if "failed" in pcolls:
            written["failed"] = pcolls["failed"] | "Write failed" >> WriteToParquet(
                catalog_prefix(self.output, "failed"), schema=FAILED_SCHEMA, file_name_suffix=".parquet"
            )
        return written


def _write_summary(counts: dict, path: str, run: dict) -> dict:
    summary = {"funnel": summarize(counts), "run": run}
    with created_atomically(path) as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


class WriteSummary(beam.PTransform):
    """Count dictionaries from every stage -> summary.json (raises if the rows do not balance)."""

    def __init__(self, output: str, run_info: dict):
        super().__init__()
        self.output = output
        self.run_info = run_info

    def expand(self, counts):
        return (
            counts
            | "All counts" >> beam.Flatten()
            | "Sum counts" >> beam.CombineGlobally(merge_counts)
            | "Write summary.json"
            >> beam.Map(_write_summary, FileSystems.join(self.output, "summary.json"), self.run_info)
        )
