"""Cutouts per second served by the das_cutout stand-in and fetched by CutoutClient over loopback,
in 200-galaxy batches (5 bands: 1000 rows, which the client sends as 990 + 10), 127 x 127 stamps.

Two passes over the same batches: `render` (the server draws every cutout with GalSim on demand)
and `cached` (the same server answers from its CutoutCache, so the cost left is tar building,
HTTP and the client's checks). Writes benchmarks/results/cutout_service.md.

    .venv/bin/python benchmarks/bench_cutout_service.py [--batches 2] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from benchmarks.measure import write_results
from galaxiesml.hsc.credentials import Credentials
from galaxiesml.hsc.cutout_client import CutoutClient, Target
from galaxiesml.hsc.format import HALF_WIDTH_127
from galaxiesml.sky import make_sky
from galaxiesml.standins.cutout_service import CutoutCache, CutoutServer, CutoutService

BATCH_GALAXIES = 200


def _run(client: CutoutClient, batches: list[list[Target]]) -> dict[str, float]:
    start = time.perf_counter()
    n_ok = n_missing = n_bytes = 0
    for batch in batches:
        for g in client.fetch_galaxies(batch, half_width=HALF_WIDTH_127, fallback=False):
            n_ok += len(g.cutouts)
            n_missing += len(g.missing)
            n_bytes += sum(len(b) for b in g.cutouts.values())
    seconds = time.perf_counter() - start
    rows = n_ok + n_missing
    return {"seconds": seconds, "rows": rows, "cutouts": n_ok, "mb": n_bytes / 1e6,
            "rows_per_s": rows / seconds, "cutouts_per_s": n_ok / seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--galaxies", type=int, default=2000, help="galaxies in the sky")
    p.add_argument("--batches", type=int, default=2, help="200-galaxy batches to fetch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cutout_service.md"))
    args = p.parse_args(argv)

    creds = Credentials("bench", "bench-password")
    sky, _ = make_sky(args.galaxies, args.seed)
    galaxies = [t for t in sky.truth.to_pylist() if t["kind"] == "galaxy" and t["filter_i"]]
    targets = [Target(t["object_id"], t["ra"], t["dec"]) for t in galaxies]
    batches = [targets[k * BATCH_GALAXIES : (k + 1) * BATCH_GALAXIES] for k in range(args.batches)]
    service = CutoutService(sky, creds, cache=CutoutCache())
    results = {}
    with CutoutServer(service) as srv, CutoutClient(creds, url=srv.url) as client:
        results["render"] = _run(client, batches)
        results["cached"] = _run(client, batches)
        requests_sent = list(service.request_rows)

    load = os.getloadavg()
    lines = [
        "# das_cutout stand-in: cutouts served and fetched over loopback",
        "",
        f"`benchmarks/bench_cutout_service.py --galaxies {args.galaxies} --batches {args.batches} --seed {args.seed}`: "
        f"{args.batches} batches of {BATCH_GALAXIES} galaxies x 5 bands, 127 x 127 image-plane cutouts "
        f"(half width {HALF_WIDTH_127:.3f}\"), one client stream, server and client in one process.",
        "",
        "| pass | rows | cutouts | seconds | rows/s | cutouts/s | MB fetched |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['rows']} | {r['cutouts']} | {r['seconds']:.1f} | {r['rows_per_s']:.0f} | "
            f"{r['cutouts_per_s']:.0f} | {r['mb']:.1f} |"
        )
    lines += [
        "",
        f"Requests per pass: {len(requests_sent) // 2} (rows each: {requests_sent[: len(requests_sent) // 2]}); "
        "a 200-galaxy batch is 1000 rows, over the 990-row request limit, so it takes two requests.",
        "`render`: every cutout drawn with GalSim on request (Sersic x Moffat, neighbours, noise) and written "
        "as FITS; `cached`: the same rows answered from the server's CutoutCache.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average during the run {load[0]:.2f} (the machine was shared with other work).",
        "",
    ]
    write_results(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
