"""HDF5 consolidation: throughput against the disk's own sequential write rate measured in the same
run, and the writer's peak memory at 2,000 and 20,000 galaxies (issue 6: at least 0.7x the disk
rate uncompressed; peak memory within 10% between the two sizes).

The Parquet input (GALAXY_SCHEMA shards of random images, ~64 MB row groups as WriteToParquet
writes them) is generated once for the largest size; smaller sizes use its first shards. Each
consolidation runs in a fresh process (benchmarks.measure) and its time includes an fsync of the
output, as the disk rate's does. The disk's rate on a shared machine swings several-fold within
minutes, so each size runs --rounds times, alternating with the disk measurement, and the ratio is
of the medians. A write of a few hundred MB ends in a cache in front of the disk here (0.2 GB went at
~1,400 MB/s where 0.8 GB and more go at 300-400 MB/s), so the disk's sustained rate is measured too,
with a write of at least SUSTAINED_BYTES, and the throughput is given against both. Needs ~2.1x the
largest size's pixels free under --workdir.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.measure import ROOT, measure
from galaxiesml.hdf5 import consolidate

RESULTS = ROOT / "benchmarks" / "results" / "hdf5.md"
SHARD_ROWS = 1000
#: The smallest write that measures the disk rather than a cache in front of it (see the docstring).
SUSTAINED_BYTES = 2_000_000_000


def consolidate_synced(paths: list[str], out: str, size: int) -> dict:
    """consolidate() then fsync, so the time covers getting the bytes onto the disk (imported at
    module level, so that the child's import time is not counted)."""
    result = consolidate(paths, out, size, attrs={"benchmark": True})
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {**result, "disk_read_bytes": _disk_read_bytes()}


def _disk_read_bytes() -> int:
    """Bytes this process has read from storage rather than the page cache (Linux /proc/self/io)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("read_bytes:")).split()[1])


def read_into_cache(paths: list[str], block: int = 16 << 20) -> None:
    """Read `paths` once so that the consolidation reads them from the page cache (it is the writer
    being measured, not the disk's reads)."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(block):
                pass


def disk_write_rate(folder: Path, nbytes: int, block: int = 16 << 20) -> float:
    """Sequential write of `nbytes` (random data, 16 MB writes) plus fsync, in MB/s."""
    buf = os.urandom(block)
    path = folder / "disk-rate.bin"
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(max(1, nbytes // block)):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    rate = max(1, nbytes // block) * block / (time.perf_counter() - start) / 1e6
    path.unlink()
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--galaxies", type=int, nargs="+", default=[2_000, 20_000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[127, 64])
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--rounds", type=int, default=3, help="consolidations (and disk measurements) per size")
    args = parser.parse_args(argv)
    import pyarrow.parquet as pq

    from tests.galaxy_shards import write_shards

    largest = max(args.galaxies)
    shard_rows = min(SHARD_ROWS, *args.galaxies)
    work = Path(tempfile.mkdtemp(prefix="bench-hdf5-", dir=args.workdir))
    rows, memory = [], {}
    try:
        start = time.perf_counter()
        shards = write_shards(work / "in", {"training": largest}, shards=-(-largest // shard_rows), seed=0)["training"]
        print(f"input: {largest} galaxies in {len(shards)} shards, {time.perf_counter() - start:.0f} s", flush=True)
        for n in sorted(args.galaxies):
            paths = shards[: -(-n // shard_rows)]
            assert sum(pq.ParquetFile(p).metadata.num_rows for p in paths) == n, "--galaxies must be multiples of the smallest"
            for size in args.sizes:
                out = work / f"out-{n}-{size}.hdf5"
                walls, disks, sustained, peaks, uncached = [], [], [], [], []
                for _ in range(args.rounds):
                    read_into_cache(paths)
                    os.sync()  # no writeback left over from earlier work competes with what is measured
                    m = measure("benchmarks.bench_hdf5:consolidate_synced", paths, str(out), size)
                    nbytes = m["result"]["bytes"]
                    uncached.append(m["result"]["disk_read_bytes"] / 1e9)
                    out.unlink()
                    os.sync()
                    disks.append(disk_write_rate(work, nbytes))
                    sustained.append(disk_write_rate(work, SUSTAINED_BYTES) if nbytes < SUSTAINED_BYTES else disks[-1])
                    walls.append(m["wall_s"])
                    peaks.append(m["peak_mb"])
                wall, disk, steady = statistics.median(walls), statistics.median(disks), statistics.median(sustained)
                rate = nbytes / wall / 1e6
                memory[(n, size)] = max(peaks)
                rows.append((n, size, nbytes / 1e9, wall, rate, disk, rate / disk, steady, rate / steady, max(peaks), walls, disks, max(uncached)))
                print(f"{n:>6} x {size}: {nbytes / 1e9:.2f} GB {wall:.1f} s {rate:.0f} MB/s, disk {disk:.0f} MB/s "
                      f"({rate / disk:.2f}x), sustained {steady:.0f} MB/s ({rate / steady:.2f}x), peak {max(peaks):.0f} MB "
                      f"(seconds {walls}, disk {disks}, sustained {sustained}, input read from disk {uncached} GB)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, big = min(args.galaxies), max(args.galaxies)
    growth = [f"{size}: {memory[(big, size)] / memory[(small, size)] - 1:+.1%}" for size in args.sizes if (small, size) in memory]
    table = "\n".join(
        [
            "# HDF5 consolidation benchmark",
            "",
            f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.2f} at the end (the machine is shared; rates vary run to run).",
            "Input: one split of GALAXY_SCHEMA Parquet shards (random float32 images, 1,000 galaxies a shard, 128-row "
            "row groups; one galaxy in ten with a padded strip, one in thirteen with a few non-finite pixels), read "
            "once just before each consolidation so that it comes from the page cache. Work: `galaxiesml.hdf5.consolidate` into one uncompressed file, then fsync; in a "
            "fresh process (time excludes imports). Disk rate: a sequential write of the same number of bytes in "
            f"16 MB writes, then fsync, right after each consolidation; `sync` before each; 'sustained': the same with at least "
            f"{SUSTAINED_BYTES / 1e9:.1f} GB, past the cache in front of this disk that takes a few hundred MB at memory speed. "
            f"{args.rounds} rounds each; medians. "
            "'GB read from disk': what the consolidation read from storage, not the page cache (/proc/self/io).",
            "",
            "| galaxies | image size | GB written | seconds | MB/s | disk MB/s, same bytes | vs disk | disk MB/s, sustained | vs sustained | peak MB | seconds (all) | disk MB/s, same bytes (all) | GB read from disk, most |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
            *(
                f"| {n:,} | {s} | {gb:.2f} | {w:.1f} | {r:.0f} | {d:.0f} | {x:.2f}x | {sd:.0f} | {sx:.2f}x | {p:.0f} | "
                f"{', '.join(f'{v:.1f}' for v in ws)} | {', '.join(f'{v:.0f}' for v in ds)} | {u:.2f} |"
                for n, s, gb, w, r, d, x, sd, sx, p, ws, ds, u in rows
            ),
            "",
            f"Peak memory change from {small:,} to {big:,} galaxies: " + ", ".join(growth) + ".",
            "Targets (issue 6): at least 0.7x the disk rate, uncompressed (it does not name a size); peak memory within 10% between the sizes.",
            f"Command: `.venv/bin/python -m benchmarks.bench_hdf5 --galaxies {' '.join(map(str, args.galaxies))} --rounds {args.rounds}`",
        ]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
