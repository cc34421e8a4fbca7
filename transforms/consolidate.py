"""Stage 6 (paper section 3.5): the written Parquet shards -> the released HDF5 files and CSVs.

A barrier first: the shard names WriteToParquet returns are grouped per split with a GroupByKey
(ToList / Count.Globally after WriteToParquet emitted nothing on some runners). Then one job per
output file, (split, 127), (split, 64) and (split, csv), reshuffled so workers take them in
parallel; each job writes its file locally and copies it to <output>/hdf5/<name> or
<output>/csv/<split>.csv. The work itself lives in galaxiesml.hdf5 and galaxiesml.storage.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from typing import Iterable

import apache_beam as beam

from galaxiesml.dataset import GALAXIES_DIR
from galaxiesml.hdf5 import SIZES, consolidate, csv_name, hdf5_name, write_split_csv
from galaxiesml.schema import SPLITS
from galaxiesml.storage import join, upload

HDF5_DIR = "hdf5"
CSV_DIR = "csv"
CSV = "csv"


def split_of(path: str) -> str:
    """The split of a shard written under .../galaxies/<split>/part-*.parquet."""
    parts = path.replace("\\", "/").split("/")
    if len(parts) < 3 or parts[-3] != GALAXIES_DIR or parts[-2] not in SPLITS:
        raise ValueError(f"not a galaxies/<split>/ shard: {path}")
    return parts[-2]


def destination(output: str, split: str, kind: int | str) -> str:
    """Where one released file goes: <output>/hdf5/<name> or <output>/csv/<split>.csv."""
    if kind == CSV:
        return join(output, CSV_DIR, csv_name(split))
    return join(output, HDF5_DIR, hdf5_name(kind, split))


def jobs(split_files: tuple[str, Iterable[str]], sizes: tuple[int, ...]) -> Iterable[tuple[str, int | str, list[str]]]:
    """One (split, kind, sorted shard paths) job per output file of a split."""
    split, files = split_files
    paths = sorted(set(files))
    for kind in (*sizes, CSV):
        yield split, kind, paths


def write_output(
    job: tuple[str, int | str, list[str]], output: str, attrs: dict, compression: str | None, funnel: dict | None = None
) -> dict:
    """Write one released file locally, copy it to its destination; returns what was written.
    `funnel`, when given, replaces the attrs' funnel (it is known only once the run has counted)."""
    split, kind, paths = job
    if funnel is not None:
        attrs = {**attrs, "funnel": funnel}
    dest = destination(output, split, kind)
    tmp = tempfile.mkdtemp(prefix="galaxiesml-")
    try:
        local = os.path.join(tmp, posixpath.basename(dest))
        if kind == CSV:
            result = write_split_csv(paths, local)
        else:
            result = consolidate(paths, local, kind, attrs={**attrs, "split": split}, compression=compression)
        upload(local, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**result, "path": dest, "split": split, "kind": str(kind)}


class Consolidate(beam.PTransform):
    """Written Parquet shard names -> the six HDF5 files and three CSVs; outputs one dict per file
    written ({"path", "split", "kind", "n_galaxies", "bytes", ...})."""

    def __init__(
        self,
        output: str,
        attrs: dict,
        compression: str | None = None,
        sizes: tuple[int, ...] = SIZES,
        funnel=None,
    ):
        """`funnel`: optionally a PCollection of one dict, the run's funnel, for the files' attrs."""
        super().__init__()
        self.output = output
        self.attrs = dict(attrs)
        self.compression = compression
        self.sizes = tuple(sizes)
        self.funnel = funnel

    def expand(self, shard_names):
        return (
            shard_names
            | "KeyShardBySplit" >> beam.WithKeys(split_of)
            | "GroupShardsBySplit" >> beam.GroupByKey()
            | "OneJobPerFile" >> beam.FlatMap(jobs, self.sizes)
            | "SpreadJobs" >> beam.Reshuffle()
            | "WriteReleasedFile"
            >> beam.Map(
                write_output,
                self.output,
                self.attrs,
                self.compression,
                beam.pvalue.AsSingleton(self.funnel) if self.funnel is not None else None,
            )
        )
