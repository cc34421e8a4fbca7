"""Crash and resume: a build killed midway and started again into the same output finishes with
the same dataset as an uninterrupted build, fetching nothing the cutout cache already holds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from galaxiesml.cutouts import unpack_cutouts
from galaxiesml.dataset import cube_numpy
from galaxiesml.hsc.credentials import Credentials
from galaxiesml.hsc.cutout_client import Target
from galaxiesml.sky import make_sky, write_sky
from galaxiesml.standins.cutout_service import CutoutCache, CutoutServer, CutoutService
from galaxiesml.standins.faults import Faults
from pipeline.cli import options, run_pipeline

CREDS = Credentials("carol", "resume-pw-55x")
ROOT = Path(__file__).resolve().parents[1]


def dataset(out: Path) -> dict:
    table = pq.read_table(sorted(out.glob("galaxies/*/part-*.parquet")))
    images = cube_numpy(table.column("image"))
    return {oid: (split, images[k]) for k, (oid, split) in
            enumerate(zip(table.column("object_id").to_pylist(), table.column("split").to_pylist()))}


def test_killed_build_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    sky, rows = make_sky(60, seed=8)
    catalog = write_sky(sky, rows, tmp_path / "input")["catalog"]
    monkeypatch.setenv("HSC_SSP_CAS_USER", CREDS.user)
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", CREDS.password)
    rendered = CutoutCache(tmp_path / "rendered")
    slow = CutoutService(sky, CREDS, Faults(slow=1.0, slow_seconds=0.4), cache=rendered)
    with CutoutServer(slow) as server:
        args = ["--catalog", str(catalog), "--cutout_source", "service", "--hsc_url", server.url,
                "--galaxies_per_request", "3", "--no_sersic", "--runner=FnApiRunner", "--progress_every", "0"]
        out = tmp_path / "killed"
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args, "--output", str(out)], cwd=ROOT,
                                env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache = out / "cache" / "cutouts"
        deadline = time.monotonic() + 120
        while len(list(cache.rglob("*.tar"))) < 6 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        entries = sorted(cache.rglob("*.tar"))
        cached = len(entries)
        assert cached >= 6, "the build should have been killed midway"
        for entry in entries:  # the kill leaves no entry cut short under its final name
            unpack_cutouts(entry.read_bytes(), Target(int(entry.stem), 0.0, 0.0))
        assert not (out / "summary.json").exists()

        requests_before = slow.stats["rows"]
        result = run_pipeline(options([*args, "--output", str(out)]))
        counters = {m.key.metric.name: m.committed for m in result.metrics().query()["counters"]}
        assert counters["cutouts.cached"] >= cached
        fetched_rows = slow.stats["rows"] - requests_before
        # only galaxies not in the cache were asked for (5 bands each, plus R2/I2 retries)
        assert fetched_rows <= 7 * counters["cutouts.fetched"]

        clean = tmp_path / "clean"
        run_pipeline(options([*args, "--output", str(clean)]))
    a, b = dataset(out), dataset(clean)
    assert a.keys() == b.keys() and len(a) > 0
    for oid in a:
        assert a[oid][0] == b[oid][0] and np.array_equal(a[oid][1], b[oid][1])
