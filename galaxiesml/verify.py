"""Check a built dataset and print its summary: `python -m galaxiesml.verify OUTPUT_DIR`.

Checks every released HDF5 file under OUTPUT_DIR/hdf5 (shapes, dtypes, finite pixels, one value per
galaxy in every column, ids sorted and unique), across files (splits disjoint, each 64 x 64 image the
central crop, pixels 31..94, of its 127 x 127 one) and against OUTPUT_DIR/summary.json (galaxies
per split = funnel.kept_by_split) and the CSVs under OUTPUT_DIR/csv when present. Images are read in
blocks, so memory stays small whatever the size. Exits 1 with one line per problem.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pyarrow.csv as pacsv

from galaxiesml.cutouts import CROP, SIZE, central_crop
from galaxiesml.dataset import TABULAR_COLUMNS
from galaxiesml.hdf5 import SIZES, csv_name, hdf5_name
from galaxiesml.schema import BANDS, SPLITS

BLOCK_ROWS = 256


@dataclass
class Report:
    """What verify() found: `problems` (empty when the dataset is good) and per-split facts."""

    problems: list[str] = field(default_factory=list)
    splits: dict[str, dict] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _blocks(n: int) -> range:
    return range(0, n, BLOCK_ROWS)


def check_file(path: Path, size: int, problems: list[str]) -> np.ndarray | None:
    """Check one HDF5 file on its own; returns its object ids (None if it cannot be read)."""
    where = path.name
    try:
        h5 = h5py.File(path, "r")
    except OSError as e:
        problems.append(f"{where}: cannot be opened ({e})")
        return None
    with h5:
        missing = [c for c in ("image", "image_flags", *TABULAR_COLUMNS) if c not in h5]
        if missing:
            problems.append(f"{where}: missing datasets {missing}")
        if "image" not in h5 or "object_id" not in h5:
            return None
        n = h5["image"].shape[0]
        for name, dtype in (("image", np.float32), ("image_flags", np.uint8)):
            if name not in h5:
                continue
            d = h5[name]
            if d.shape != (n, len(BANDS), size, size):
                problems.append(f"{where}: {name} has shape {d.shape}, expected ({n}, {len(BANDS)}, {size}, {size})")
            if d.dtype != dtype:
                problems.append(f"{where}: {name} has dtype {d.dtype}, expected {np.dtype(dtype)}")
        lengths = {c: h5[c].shape[0] for c in TABULAR_COLUMNS if c in h5}
        wrong = {c: k for c, k in lengths.items() if k != n}
        if wrong:
            problems.append(f"{where}: columns whose length differs from the {n} images: {wrong}")
        ids = h5["object_id"][:]
        if len(ids) and not (np.diff(ids) > 0).all():
            repeated = np.unique(ids[1:][np.diff(ids) == 0])
            if len(repeated):
                problems.append(f"{where}: {len(repeated)} object_id values repeat, e.g. {repeated[:5].tolist()}")
            else:
                problems.append(f"{where}: rows are not sorted by object_id")
        bad = [
            int(ids[start + j])
            for start in _blocks(n)
            for j in np.flatnonzero(~np.isfinite(h5["image"][start : start + BLOCK_ROWS]).all(axis=(1, 2, 3)))
        ] if h5["image"].dtype.kind == "f" else []
        if bad:
            problems.append(f"{where}: {len(bad)} images have NaN or infinite pixels, e.g. object_id {bad[:5]}")
        return ids


def check_crop(path127: Path, path64: Path, problems: list[str]) -> None:
    """The 64 x 64 file holds the central crop of the 127 x 127 file, row for row."""
    with h5py.File(path127, "r") as big, h5py.File(path64, "r") as small:
        if not np.array_equal(big["object_id"][:], small["object_id"][:]):
            problems.append(f"{path64.name}: galaxies differ from {path127.name}")
            return
        for name in ("image", "image_flags"):
            for start in _blocks(big[name].shape[0]):
                crop = central_crop(big[name][start : start + BLOCK_ROWS], CROP)
                if crop.shape != small[name][start : start + BLOCK_ROWS].shape or not np.array_equal(
                    crop, small[name][start : start + BLOCK_ROWS]
                ):
                    problems.append(
                        f"{path64.name}: {name} rows from {start} are not the central crop (pixels 31..94) of {path127.name}"
                    )
                    break


def verify(output_dir: str | Path) -> Report:
    """Check the dataset under `output_dir` (a local folder)."""
    root = Path(output_dir)
    report = Report()
    problems = report.problems
    try:
        expected = json.loads((root / "summary.json").read_text())["funnel"]["kept_by_split"]
    except (OSError, KeyError, ValueError) as e:
        problems.append(f"summary.json: cannot read funnel.kept_by_split ({e})")
        expected = {}
    ids_by_split: dict[str, np.ndarray] = {}
    for split in SPLITS:
        want = int(expected.get(split, 0))
        facts = {"expected": want, "files": {}}
        report.splits[split] = facts
        for size in SIZES:
            path = root / "hdf5" / hdf5_name(size, split)
            if not path.exists():
                if want:
                    problems.append(f"{path.name}: missing ({want} galaxies expected)")
                continue
            ids = check_file(path, size, problems)
            if ids is None:
                continue
            facts["files"][path.name] = {"galaxies": len(ids), "mb": round(path.stat().st_size / 1e6, 1)}
            if len(ids) != want:
                problems.append(f"{path.name}: {len(ids)} galaxies, summary.json kept_by_split says {want}")
            if size == SIZE:
                ids_by_split[split] = ids
        path127, path64 = (root / "hdf5" / hdf5_name(s, split) for s in (SIZE, CROP))
        if path127.exists() and path64.exists() and split in ids_by_split:
            check_crop(path127, path64, problems)
        csv = root / "csv" / csv_name(split)
        if csv.exists():
            table = pacsv.read_csv(csv, convert_options=pacsv.ConvertOptions(include_columns=["object_id"]))
            csv_ids = table.column("object_id").to_numpy()
            facts["files"][csv.name] = {"galaxies": len(csv_ids), "mb": round(csv.stat().st_size / 1e6, 1)}
            if split in ids_by_split and not np.array_equal(csv_ids, ids_by_split[split]):
                problems.append(f"{csv.name}: object ids differ from {hdf5_name(SIZE, split)}")
    for a, b in itertools.combinations(ids_by_split, 2):
        shared = np.intersect1d(ids_by_split[a], ids_by_split[b])
        if len(shared):
            problems.append(f"splits {a} and {b} share {len(shared)} galaxies, e.g. object_id {shared[:5].tolist()}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="the build's output folder (holding summary.json, hdf5/, csv/)")
    args = parser.parse_args(argv)
    report = verify(args.output_dir)
    for split, facts in report.splits.items():
        files = ", ".join(f"{name} ({f['galaxies']} galaxies, {f['mb']} MB)" for name, f in facts["files"].items())
        print(f"{split}: {facts['expected']} galaxies expected; {files or 'no files'}")
    if report.problems:
        for problem in report.problems:
            print(f"FAIL {problem}", file=sys.stderr)
        print(f"{len(report.problems)} problem(s) found", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
