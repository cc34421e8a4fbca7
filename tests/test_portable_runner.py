"""The whole job on Beam's portable path with its SDK workers in other processes, as on a cluster:
PortableRunner, the embedded job service, and an EXTERNAL worker pool that this test starts on a
free loopback port (`python -m apache_beam.runners.worker.worker_pool_main`). The demo (a small
synthetic sky behind the loopback das_cutout stand-in) must give the same dataset as FnApiRunner:
the same galaxies per split, pixels, morphology and funnel.

Two things a cluster needs are exercised here:
- the SDK workers reach the stand-in, which runs in this test process, over loopback;
- the HSC account reaches the workers only through their environment. A worker pool's workers
  inherit the pool's environment from when the pool started, not the launcher's at run time, so the
  pool is started with the account already set (as a Dataflow container or a Flink task manager
  would have it). A pool without it fails the job in FetchCutouts with HscAuthError.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galaxiesml.dataset import cube_numpy
from galaxiesml.morphology import MORPHOLOGY_COLUMNS
from pipeline import demo as demo_module
from pipeline.cli import run

PASSWORD = "portable-pw-K3v!p28"
GALAXIES = 40
SEED = 3
SPLITS = ("training", "validation", "testing")

# The pool with its port given as 0 (gRPC picks a free one, so no race for a port), logging at INFO so
# that the line naming the bound port is printed whatever Beam's imports did to logging.
_POOL = (
    "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
    "from apache_beam.runners.worker import worker_pool_main; "
    "worker_pool_main.main(sys.argv)"
)
_LISTENING = re.compile(r"Started worker pool servicer at port: \S*?:(\d+)")


@contextlib.contextmanager
def worker_pool(env: dict[str, str], log_path: Path, timeout_s: float = 60.0):
    """An EXTERNAL-environment worker pool in its own process group; yields its port and stops the
    pool and any SDK worker it started afterwards."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _POOL, "--service_port=0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the pool and its workers are stopped together
        )
    try:
        deadline = time.monotonic() + timeout_s
        port = None
        while port is None:
            match = _LISTENING.search(log_path.read_text(errors="replace"))
            if match:
                port = int(match.group(1))
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker pool did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            else:
                time.sleep(0.1)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the pool stops its server and kills its workers at exit
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group still there
        proc.wait()


def pool_environment() -> dict[str, str]:
    """The pool's (and so its workers') environment: this one, with the demo's account, and this
    interpreter's directory first on PATH (the pool starts workers as plain `python`)."""
    env = dict(os.environ)
    env["HSC_SSP_CAS_USER"] = demo_module.DEMO_USER
    env["HSC_SSP_CAS_PASSWORD"] = PASSWORD
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONSTARTUP", None)
    return env


def run_demo(out: Path, runner_args: list[str]) -> dict:
    mp = pytest.MonkeyPatch()
    mp.setattr(demo_module.secrets, "token_urlsafe", lambda n: PASSWORD)  # the account the pool holds
    try:
        return demo_module.demo(
            ["--galaxies", str(GALAXIES), "--seed", str(SEED), "--output", str(out), "--galaxies_per_shard", "8",
             *runner_args],
            run,
        )
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("portable")
    fn_out, portable_out = base / "fnapi", base / "portable"
    fn_summary = run_demo(fn_out, ["--runner=FnApiRunner"])
    # the stand-in's rendered pixels are deterministic: reuse them rather than draw them twice
    (portable_out / "input").mkdir(parents=True)
    os.symlink(fn_out / "input" / "rendered", portable_out / "input" / "rendered")
    log_path = base / "worker_pool.log"
    with worker_pool(pool_environment(), log_path) as port:
        portable_summary = run_demo(
            portable_out,
            [
                "--runner=PortableRunner",
                "--job_endpoint=embed",
                "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{port}",
            ],
        )
    return {
        "fnapi": (fn_out, fn_summary),
        "portable": (portable_out, portable_summary),
        "pool_log": log_path.read_text(errors="replace"),
    }


def galaxies(out: Path, split: str):
    files = sorted((out / "galaxies" / split).glob("part-*.parquet"))
    assert files, f"no galaxies written for {split} in {out}"
    return pq.read_table(files).sort_by("object_id")


def same_values(a, b) -> bool:
    """Equal, NaN equal to NaN (Arrow's equals() calls NaN unequal to itself)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return x.shape == y.shape and bool(np.all((x == y) | (np.isnan(x) & np.isnan(y))))


def test_sdk_workers_ran_in_other_processes(built):
    assert "Starting worker with command" in built["pool_log"], built["pool_log"][-3000:]


def test_same_funnel(built):
    fn, portable = built["fnapi"][1], built["portable"][1]
    assert portable["funnel"] == fn["funnel"]
    assert fn["funnel"]["kept"] > 0.8 * GALAXIES and fn["funnel"]["failed"] == 0
    on_disk = json.loads((built["portable"][0] / "summary.json").read_text())
    assert on_disk["funnel"] == fn["funnel"]


@pytest.mark.parametrize("split", SPLITS)
def test_same_galaxies_pixels_and_morphology(built, split):
    a, b = galaxies(built["fnapi"][0], split), galaxies(built["portable"][0], split)
    assert a.column("object_id").to_pylist() == b.column("object_id").to_pylist()
    assert a.num_rows == built["fnapi"][1]["funnel"]["kept_by_split"][split]
    assert a.schema.equals(b.schema, check_metadata=False)
    for column in ("image", "image_64", "image_flags"):
        assert np.array_equal(cube_numpy(a.column(column)), cube_numpy(b.column(column))), column
    for column in MORPHOLOGY_COLUMNS:
        assert same_values(a.column(column).to_pylist(), b.column(column).to_pylist()), column
    # every catalog column too; `source` is the path of each run's own copy of the catalog
    for column in a.column_names:
        if column in ("image", "image_64", "image_flags", "source") or column in MORPHOLOGY_COLUMNS:
            continue
        if pa.types.is_floating(a.schema.field(column).type):
            assert same_values(a.column(column).to_pylist(), b.column(column).to_pylist()), column
        else:
            assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    assert [Path(s).name for s in a.column("source").to_pylist()] == [Path(s).name for s in b.column("source").to_pylist()]


def test_same_catalog_outputs(built):
    for name in ("kept", "rejected", "duplicates"):
        a = pq.read_table(sorted((built["fnapi"][0] / "catalog").glob(f"{name}-*.parquet")))
        b = pq.read_table(sorted((built["portable"][0] / "catalog").glob(f"{name}-*.parquet")))
        assert a.num_rows == b.num_rows, name
        key = lambda t: sorted(zip(t.column("line").to_pylist(), t.column("object_id").to_pylist()))  # noqa: E731
        assert key(a) == key(b), name


def test_no_credential_in_anything_the_portable_run_wrote(built):
    out = built["portable"][0]
    for path in out.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_a_pool_started_without_the_account_fails_the_job_clearly(built, tmp_path):
    """Setting the account in the launcher after the pool started does not reach the workers."""
    out = tmp_path / "no_account"
    (out / "input").mkdir(parents=True)
    os.symlink(built["fnapi"][0] / "input" / "rendered", out / "input" / "rendered")
    env = pool_environment()
    for name in ("HSC_SSP_CAS_USER", "HSC_SSP_CAS_PASSWORD", "SSP_PDR_USR", "SSP_PDR_PWD"):
        env.pop(name, None)
    with worker_pool(env, tmp_path / "worker_pool.log") as port:
        with pytest.raises(Exception, match="no HSC archive account configured") as failure:
            run_demo(
                out,
                ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                 f"--environment_config=localhost:{port}"],
            )
    assert PASSWORD not in str(failure.value)


def test_a_build_from_a_coadd_mirror_is_the_same_on_the_portable_runner(tmp_path):
    """The coadd source's GroupByKey per patch, each group cut and stacked on SDK workers in other
    processes, reading the mirror from their own filesystem calls."""
    from galaxiesml.sky import make_sky, write_sky

    sky, rows = make_sky(40, seed=21, patch_px=400, empty_share=0.0, band_gap_share=0.0, old_filter_share=0.1)
    catalog = write_sky(sky, rows, tmp_path / "input")["catalog"]
    sky.write_patches(tmp_path / "mirror", border=100, catalogs=True)
    common = ["--catalog", str(catalog), "--cutout_source", "coadd", "--coadd_root", str(tmp_path / "mirror"),
              "--no_sersic", "--progress_every=0", "--galaxies_per_shard", "8"]
    fn = run([*common, "--output", str(tmp_path / "fnapi"), "--runner=FnApiRunner"])
    log_path = tmp_path / "worker_pool.log"
    with worker_pool(pool_environment(), log_path) as port:
        portable = run([*common, "--output", str(tmp_path / "portable"), "--runner=PortableRunner", "--job_endpoint=embed",
                        "--environment_type=EXTERNAL", f"--environment_config=localhost:{port}"])
    assert "Starting worker with command" in log_path.read_text(errors="replace")
    assert portable["funnel"] == fn["funnel"] and fn["funnel"]["kept"] > 20 and fn["funnel"]["failed"] == 0
    for split in SPLITS:
        if not fn["funnel"]["kept_by_split"].get(split):
            continue
        a, b = galaxies(tmp_path / "fnapi", split), galaxies(tmp_path / "portable", split)
        assert a.column("object_id").to_pylist() == b.column("object_id").to_pylist()
        assert np.array_equal(cube_numpy(a.column("image")), cube_numpy(b.column("image")))
