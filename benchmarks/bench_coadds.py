"""Cutting stamps from a coadd mirror (galaxiesml.coadds, as CutFromCoadds does per patch group).

    python -m benchmarks.bench_coadds [--galaxies 400] [--rounds 3] [--work DIR]

(1) The mirror's size changes no cost: the same galaxies (in 10 patches) cut from a mirror of those
    10 patch files and from one of 2,000 (tiny pixel arrays; the other 1,990 files never touched),
    per galaxy-band, including the per-group setup (opening the file, reading its headers).
(2) Real-size patches (4,200 x 4,200 float32 image, int32 mask, float32 variance, as the release's
    calexp files): galaxies/s and bytes read per galaxy-band, against reading each file whole
    (astropy, every plane), for crowded and sparse patches.
Writes benchmarks/results/coadds.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from benchmarks.measure import write_results
from galaxiesml.coadds import PatchFile, PatchKey
from galaxiesml.cutouts import Stamp
from galaxiesml.hsc.format import PAPER_HALF_WIDTH, PIXEL_SCALE

ROOT = Path(__file__).resolve().parents[1]
TRACT = 9813
FILTER = "HSC-I"


def patch_wcs(px: int, py: int, inner: int, border: int) -> WCS:
    """A TAN WCS for patch (px, py) of a tract whose pixel (0, 0) is at (150, 2) deg."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.cdelt = [-PIXEL_SCALE / 3600, PIXEL_SCALE / 3600]
    w.wcs.crpix = [1 - (px * inner - border), 1 - (py * inner - border)]
    return w


def write_patch(root: Path, px: int, py: int, inner: int, border: int, rng) -> Path:
    side = inner + 2 * border
    path = Path(PatchKey(FILTER, TRACT, px, py).path(str(root)))
    path.parent.mkdir(parents=True, exist_ok=True)
    header = patch_wcs(px, py, inner, border).to_header()
    image = rng.normal(0, 0.05, (side, side)).astype(np.float32)
    hdus = [fits.PrimaryHDU(header=fits.Header([("FILTER", FILTER)]))]
    for data, kind in ((image, "IMAGE"), (np.zeros((side, side), np.int32), "MASK"),
                       (np.full((side, side), 0.0025, np.float32), "VARIANCE")):
        h = header.copy()
        h["EXTTYPE"] = kind
        hdus.append(fits.ImageHDU(data, header=h))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def galaxies_in(px: int, py: int, n: int, inner: int, border: int, rng) -> list[tuple[float, float]]:
    """n positions inside patch (px, py)'s inner region, at least a stamp's half from its edge."""
    w = patch_wcs(px, py, inner, border)
    margin = 70
    xs = rng.uniform(border + margin, border + inner - margin, n)
    ys = rng.uniform(border + margin, border + inner - margin, n)
    ra, dec = w.wcs_pix2world(xs, ys, 0)
    return list(zip(ra.tolist(), dec.tolist()))


def cut(root: Path, groups: dict[tuple[int, int], list[tuple[float, float]]], planes=("image",)) -> tuple[float, int, int]:
    """Cut every group's stamps as CutFromCoadds does; (seconds, bytes read, stamps)."""
    t = time.perf_counter()
    read = stamps = 0
    for (px, py), members in groups.items():
        with open(PatchKey(FILTER, TRACT, px, py).path(str(root)), "rb") as f:
            patch = PatchFile(f, planes)
            pixels = [patch.pixel(ra, dec) for ra, dec in members]
            boxes = [patch.box_at(x, y, PAPER_HALF_WIDTH) for x, y in pixels]
            for box, (x, y), planes_of_box in zip(boxes, pixels, patch.stamps(boxes)):
                Stamp(planes_of_box, x - box[0], y - box[2])
                stamps += 1
            read += patch.bytes_read
    return time.perf_counter() - t, read, stamps


def whole_files(root: Path, groups, planes=("image", "mask", "variance")) -> tuple[float, int]:
    """The baseline: every file read whole (astropy, each plane), then the same stamps made the
    same way from memory: only the reading differs."""
    t = time.perf_counter()
    read = 0
    for (px, py), members in groups.items():
        path = PatchKey(FILTER, TRACT, px, py).path(str(root))
        with fits.open(path, memmap=False) as hdul:
            whole = {p: np.asarray(hdul[k].data) for k, p in enumerate(planes, start=1)}
        read += os.path.getsize(path)
        with open(path, "rb") as f:
            patch = PatchFile(f, planes)  # its headers only, for the boxes and the stamps' WCS
        for ra, dec in members:
            x, y = patch.pixel(ra, dec)
            x0, x1, y0, y1 = patch.box_at(x, y, PAPER_HALF_WIDTH)
            Stamp({p: a[y0:y1, x0:x1].copy() for p, a in whole.items()}, x - x0, y - y0)
    return time.perf_counter() - t, read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--galaxies", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "galaxiesml-bench-coadds"))
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    rng = np.random.default_rng(0)

    # (1) 10 vs 2,000 patch files: the galaxies in the first 10 (inner 200 px + 100 px borders), the
    # other 1,990 tiny (8 x 8 px: they are never opened, so their size does not matter)
    small, big = work / "mirror10", work / "mirror2000"
    for i in range(2000):
        px, py = divmod(i, 50)
        for root in ((small, big) if i < 10 else (big,)):
            write_patch(root, px, py, 200 if i < 10 else 4, 100 if i < 10 else 2, np.random.default_rng(i))
    groups = {divmod(i, 50): galaxies_in(*divmod(i, 50), args.galaxies // 10, 200, 100, rng) for i in range(10)}
    runs: dict[str, list] = {"10 files": [], "2,000 files": []}
    for r in range(args.rounds):  # alternating, so that a drift of the machine falls on both
        pair = (("10 files", small), ("2,000 files", big))
        for name, root in pair[:: 1 if r % 2 == 0 else -1]:
            runs[name].append(cut(root, groups))
    scale = {name: (min(x[0] for x in rs), rs[0][1], rs[0][2]) for name, rs in runs.items()}
    ratios = sorted(b[0] / a[0] for a, b in zip(runs["10 files"], runs["2,000 files"]))

    # (2) real-size patches: 3 crowded (the galaxies spread over them) and 3 sparse (5 each)
    real = work / "real"
    for i in range(6):
        write_patch(real, i, 0, 4000, 100, np.random.default_rng(100 + i))
    crowded = {(i, 0): galaxies_in(i, 0, args.galaxies // 3, 4000, 100, rng) for i in range(3)}
    sparse = {(i, 0): galaxies_in(i, 0, 5, 4000, 100, rng) for i in range(3, 6)}
    real_rows = []
    for label, groups2 in (("crowded", crowded), ("sparse", sparse)):
        n = sum(len(v) for v in groups2.values())
        for planes in (("image",), ("image", "mask", "variance")):
            runs = [cut(real, groups2, planes) for _ in range(args.rounds)]
            best = min(r[0] for r in runs)
            real_rows.append((label, n, "rows read, " + "+".join(planes), best, runs[0][1]))
        runs = [whole_files(real, groups2) for _ in range(args.rounds)]
        real_rows.append((label, n, "whole files (astropy, 3 planes)", min(r[0] for r in runs), runs[0][1]))
    shutil.rmtree(work, ignore_errors=True)

    (t10, b10, n10), (t2k, b2k, n2k) = scale["10 files"], scale["2,000 files"]
    lines = [
        "# Stamps from a coadd mirror (issue 22)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average at the end {os.getloadavg()[0]:.2f} (the machine is shared).",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_coadds --galaxies {args.galaxies} --rounds {args.rounds}`",
        "",
        "Each cell is the best of the rounds; the work is galaxiesml.coadds as CutFromCoadds runs it for each patch",
        "group (open the file, read its headers, read the rows the stamps span, place each galaxy in its stamp by the",
        "patch's WCS), on a local disk whose page cache holds the files after the first round.",
        "",
        "## (1) The mirror's size changes no cost",
        "",
        "| mirror | stamps | ms per stamp (setup included) | bytes read per stamp |",
        "| --- | ---: | ---: | ---: |",
        f"| 10 patch files | {n10} | {1000 * t10 / n10:.3f} | {b10 / n10:,.0f} |",
        f"| 2,000 patch files | {n2k} | {1000 * t2k / n2k:.3f} | {b2k / n2k:,.0f} |",
        "",
        f"**2,000 / 10 files: {t2k / t10:.2f}x the time (best of each; round by round {ratios[0]:.2f}-{ratios[-1]:.2f}x, "
        f"median {ratios[len(ratios) // 2]:.2f}x), {b2k / b10:.2f}x the bytes**: the files are named from the",
        "catalog's patch, the other 1,990 are never opened, and nothing lists the mirror.",
        "",
        "## (2) Real-size patches (4,200 x 4,200 px, three planes: ~212 MB a file)",
        "",
        "| patches | galaxies | how | galaxies/s (one band) | MB read per galaxy-band |",
        "| --- | ---: | --- | ---: | ---: |",
        *(f"| {label} | {n} | {how} | {n / t:,.0f} | {b / n / 1e6:.2f} |" for label, n, how, t, b in real_rows),
        "",
        "Both ways make the same stamps (galaxiesml.cutouts.Stamp, what a build shuffles): only the reading differs.",
        "Crowded: the galaxies share 3 patches, so the runs of rows they span overlap and each row is read",
        "once, and a whole file is nearly all needed anyway; sparse: 5 galaxies a patch, where reading rows",
        "instead of files reads 7x less with all three planes and 22x less with the image alone. On gs:// or",
        "s3:// the bytes are the cost. For comparison the service path's client alone costs ~32 ms of CPU per",
        "galaxy (5 bands; fetch_stage.md), before the service's own time and its 2-stream limit.",
    ]
    write_results(ROOT / "benchmarks" / "results" / "coadds.md", lines)


if __name__ == "__main__":
    main()
