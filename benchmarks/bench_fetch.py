"""Galaxies/s of the FetchCutouts stage on DirectRunner against the das_cutout stand-in, and of a
plain Python loop doing the same work with the same client, measured in one session (issue 4).

- `loop`: CutoutClient.fetch_galaxies in batches of 198 galaxies, then galaxy_image on each: the
  least a builder must do to get the same image cubes, one stream, no Beam.
- `stage, 1 worker`: Create(kept table) | FetchCutouts | drop, on DirectRunner in-process (its
  defaults: --max_streams 2, two request threads), and the same with --max_streams 1.
- `stage, 2 workers`: the same on `--direct_running_mode=multi_processing --direct_num_workers=2`
  with --max_streams 1 (workers x max_streams <= 2, the HSC limit; the stand-in enforces it).
- `empty ...`: the same pipelines without the fetch (Create | request batches | Reshuffle | drop):
  Beam's fixed start-up and teardown, subtracted to give the stage's own time.

The stand-in serves pre-rendered 127 x 127 cutouts (half width 10.584") from an on-disk cache, in
its own process; the stage runs with no cutout cache, so every galaxy is fetched. Each measurement
runs in a fresh process (benchmarks/measure.py); contenders alternate over --rounds and the best
of each is reported. Writes benchmarks/results/fetch_stage.md.

    .venv/bin/python -m benchmarks.bench_fetch [--galaxies 1000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.measure import measure, write_results
from benchmarks.standin import BENCH_CREDENTIALS, ServerProcess, cache_files, prerender_cache, request_keys
from galaxiesml.hsc.format import HALF_WIDTH_127
from galaxiesml.schema import BANDS

GALAXIES_PER_BATCH = 198


# -- the contenders (run in fresh processes by measure()) ----------------------------------------
def _targets(path: str) -> pa.Table:
    return pq.read_table(path)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (Beam's workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def run_loop(url: str, targets_path: str) -> dict:
    """The plain loop: fetch_galaxies per 198, galaxy_image on each."""
    from galaxiesml.cutouts import CutoutError, galaxy_image
    from galaxiesml.hsc.credentials import Credentials
    from galaxiesml.hsc.cutout_client import CutoutClient, Target

    rows = _targets(targets_path).to_pylist()
    targets = [Target(r["object_id"], r["ra"], r["dec"]) for r in rows]
    t0, c0 = time.perf_counter(), cpu_seconds()
    ok = failed = 0
    with CutoutClient(Credentials.from_env(), url=url) as client:
        for start in range(0, len(targets), GALAXIES_PER_BATCH):
            for g in client.fetch_galaxies(targets[start : start + GALAXIES_PER_BATCH], half_width=HALF_WIDTH_127):
                try:
                    galaxy_image(g)
                    ok += 1
                except CutoutError:
                    failed += 1
        requests = client.stats["requests"]
    return {"seconds": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "galaxies": ok, "failed": failed,
            "requests": requests}


def _drop(record) -> None:
    from apache_beam.metrics import Metrics

    Metrics.counter("bench", "galaxies").inc()


def run_stage(url: str, targets_path: str, workers: int, max_streams: int, fetch: bool = True) -> dict:
    """Create(kept table) | FetchCutouts | drop on DirectRunner; `fetch=False` leaves the fetch out."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.fetch_cutouts import CutoutConfig, FetchCutouts, request_batches

    table = _targets(targets_path)
    args = ["--runner=DirectRunner"]
    if workers > 1:
        args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    config = CutoutConfig(source="service", url=url, half_width=HALF_WIDTH_127, cache="", max_streams=max_streams)
    t0, c0 = time.perf_counter(), cpu_seconds()
    p = beam.Pipeline(options=PipelineOptions(args))
    kept = p | "Kept" >> beam.Create([table])
    if fetch:
        galaxies = (kept | "FetchCutouts" >> FetchCutouts(config)).galaxies
    else:
        galaxies = (
            kept
            | "Request batches" >> beam.FlatMap(request_batches, config.galaxies_per_request)
            | "Spread requests" >> beam.Reshuffle()
            | "Rows" >> beam.FlatMap(lambda rows: rows)
        )
    galaxies | "Drop" >> beam.Map(_drop)
    result = p.run()
    result.wait_until_finish()
    seconds, cpu_s = time.perf_counter() - t0, cpu_seconds() - c0
    counters = {
        m.key.metric.name: m.committed if m.committed is not None else m.attempted
        for m in result.metrics().query()["counters"]
        if m.key.metric.namespace == "bench"
    }
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "cpu_s": cpu_s, "counters": counters, "worker_peak_mb": worker_peak}


# -- the session ----------------------------------------------------------------------------------
def pick_targets(sky, n: int) -> pa.Table:
    """The first n galaxies covered in every band, as the kept rows the stage reads."""
    truth = sky.truth.to_pylist()
    chosen = [t for t in truth if t["kind"] == "galaxy" and all(t[f"filter_{b}"] for b in BANDS)][:n]
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} fully covered galaxies in the sky; raise --sky_galaxies")
    return pa.table(
        {
            "source": ["bench"] * n,
            "line": list(range(n)),
            "object_id": [t["object_id"] for t in chosen],
            "specz_name": [f"bench-{t['object_id']}" for t in chosen],
            "ra": [t["ra"] for t in chosen],
            "dec": [t["dec"] for t in chosen],
        }
    )


CONTENDERS = {
    "loop": ("plain loop (1 stream)", "benchmarks.bench_fetch:run_loop", ()),
    "stage1": ("FetchCutouts, 1 worker, --max_streams 2", "benchmarks.bench_fetch:run_stage", (1, 2)),
    "stage1s1": ("FetchCutouts, 1 worker, --max_streams 1", "benchmarks.bench_fetch:run_stage", (1, 1)),
    "stage2": ("FetchCutouts, 2 workers, --max_streams 1", "benchmarks.bench_fetch:run_stage", (2, 1)),
    "empty1": ("empty pipeline, 1 worker", "benchmarks.bench_fetch:run_stage", (1, 2, False)),
    "empty2": ("empty pipeline, 2 workers", "benchmarks.bench_fetch:run_stage", (2, 1, False)),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--galaxies", type=int, default=1000, help="galaxies fetched per measurement")
    p.add_argument("--sky_galaxies", type=int, default=0, help="galaxies in the sky (default 1.25 x --galaxies)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", default="/tmp/galaxiesml-bench", help="pre-rendered cutouts and logs (kept between runs)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "fetch_stage.md"))
    args = p.parse_args(argv)

    from galaxiesml.sky import make_sky

    sky_n = args.sky_galaxies or int(args.galaxies * 1.25) + 10
    work = Path(args.work) / f"sky-{sky_n}-seed-{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    sky, _ = make_sky(sky_n, args.seed)
    table = pick_targets(sky, args.galaxies)
    targets_path = work / f"targets-{args.galaxies}.parquet"
    pq.write_table(table, targets_path)
    cache_dir = work / "rendered"
    keys = request_keys(zip(table.column("ra").to_pylist(), table.column("dec").to_pylist()), HALF_WIDTH_127)
    prerender_cache(sky, keys, cache_dir)
    del sky

    os.environ["HSC_SSP_CAS_USER"], os.environ["HSC_SSP_CAS_PASSWORD"] = BENCH_CREDENTIALS.user, BENCH_CREDENTIALS.password
    results: dict[str, list[dict]] = {k: [] for k in CONTENDERS}
    started = datetime.datetime.now(datetime.timezone.utc)
    loads = []
    with ServerProcess(sky_n, args.seed, cache_dir, work / "server.log") as server:
        before = cache_files(cache_dir)
        for r in range(args.rounds):
            for name, (label, target, extra) in CONTENDERS.items():
                m = measure(target, server.url, str(targets_path), *extra)
                res = m["result"]
                if "counters" in res:
                    c = res["counters"]
                    res["galaxies"] = c.get("galaxies", 0)
                if name in ("loop", "stage1", "stage1s1", "stage2"):
                    assert res["galaxies"] == args.galaxies, (name, res)
                results[name].append(res)
                loads.append(os.getloadavg()[0])
                print(f"round {r + 1} {label}: {res['seconds']:.2f} s", flush=True)
        rendered_while_serving = cache_files(cache_dir) - before
    if rendered_while_serving:
        print(f"warning: the server rendered {rendered_while_serving} cutouts while measured")

    best = {k: min(v, key=lambda x: x["seconds"]) for k, v in results.items()}
    n = args.galaxies
    loop_s = best["loop"]["seconds"]
    rows = []
    for name, (label, _, _) in CONTENDERS.items():
        s = best[name]["seconds"]
        all_s = ", ".join(f"{x['seconds']:.2f}" for x in results[name])
        if name.startswith("empty"):
            rows.append(f"| {label} | {s:.2f} ({all_s}) | - | - | - | {best[name]['cpu_s']:.1f} | - |")
            continue
        empty = best["empty2" if name == "stage2" else "empty1"]["seconds"] if name != "loop" else 0.0
        stage_s = s - empty
        empty_cpu = best["empty2" if name == "stage2" else "empty1"]["cpu_s"] if name != "loop" else 0.0
        rows.append(
            f"| {label} | {s:.2f} ({all_s}) | {n / s:.1f} | {stage_s:.2f} | {n / stage_s:.1f} | "
            f"{best[name]['cpu_s']:.1f} | {1000 * (best[name]['cpu_s'] - empty_cpu) / n:.0f} |"
        )
    ratio_wall = best["stage1"]["seconds"] / loop_s
    ratio_stage = (best["stage1"]["seconds"] - best["empty1"]["seconds"]) / loop_s
    ratio_s1 = (best["stage1s1"]["seconds"] - best["empty1"]["seconds"]) / loop_s
    speedup2 = (best["stage1"]["seconds"] - best["empty1"]["seconds"]) / (best["stage2"]["seconds"] - best["empty2"]["seconds"])
    cpu_ratio = (best["stage1"]["cpu_s"] - best["empty1"]["cpu_s"]) / best["loop"]["cpu_s"]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.machine())
    lines = [
        "# FetchCutouts stage vs a plain loop (issue 4)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC on {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Beam 2.77 DirectRunner; load average during the session {min(loads):.2f}-{max(loads):.2f} "
        "(the machine is shared with other work).",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_fetch --galaxies {n} --rounds {args.rounds} --seed {args.seed}`",
        "",
        f"Work: {n} galaxies x 5 bands = {5 * n} cutouts of 127 x 127 px (half width {HALF_WIDTH_127:.3f}\"), "
        f"image plane, {best['loop']['requests']} requests of <= 198 galaxies (990 rows), fetched from the das_cutout "
        "stand-in (`python -m galaxiesml.standins`, its own process) answering from pre-rendered cutouts on disk; "
        "each fetched galaxy decoded and stacked (galaxy_image). The stage runs with no cutout cache (every galaxy "
        f"fetched; the {n} image records that come out are counted and checked). The server rendered "
        f"{rendered_while_serving} cutouts while measured.",
        "",
        f"Each cell: best of {args.rounds} alternating runs, each in a fresh process, timed around the work "
        "(pipeline construction, run and teardown for Beam; imports excluded). \"stage\" = the pipeline minus the "
        "same pipeline without the fetch (Beam's fixed start-up, large for multi_processing, which starts its "
        "worker processes).",
        "",
        "| contender | wall s (all runs) | galaxies/s (wall) | stage s | galaxies/s (stage) | CPU s | stage CPU ms / galaxy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"**Overhead ratio, stage on 1 worker / plain loop: {ratio_stage:.2f}x** (target within 1.25x; "
        f"{ratio_wall:.2f}x counting Beam's start-up; {ratio_s1:.2f}x with --max_streams 1, one request at a time "
        f"like the loop). 2 workers vs 1 (stage): {speedup2:.2f}x. In CPU time (less sensitive to a shared "
        f"machine): stage on 1 worker / loop = {cpu_ratio:.2f}x.",
        "",
        "CPU s: user + system time of the measured process and its Beam worker processes (not the server's).",
        "",
        f"Peak memory of the 2-worker run's largest worker process: {best['stage2']['worker_peak_mb']:.0f} MB.",
        "",
    ]
    write_results(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
