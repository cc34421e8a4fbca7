"""Shared test fixtures: runners pinned to in-process Beam (no downloads), small catalogs, a GCS
emulator."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

#: Real HSC stamps and PSFs shipped with the tests (origin and licence in their README.md).
REAL_HSC = Path(__file__).resolve().parent / "data" / "real_hsc"


#: The bucket the gcs_emulator fixture creates.
GCS_BUCKET = "galaxiesml-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs_emulator():
    """An in-memory gcp-storage-emulator on 127.0.0.1 (never real GCS) holding GCS_BUCKET, and
    STORAGE_EMULATOR_HOST pointing at it, for one test module; yields the bucket (a
    google-cloud-storage Bucket, whose clients honour STORAGE_EMULATOR_HOST with anonymous
    credentials). Skips where google-cloud-storage or the emulator is not installed."""
    storage = pytest.importorskip("google.cloud.storage")
    program = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable))
    if program is None:
        pytest.skip("gcp-storage-emulator is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [program, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--default-bucket", GCS_BUCKET, "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    try:
        # Beam's gs:// filesystem looks for Google credentials before it connects anonymously: with
        # the gcp extra that is ~20 s of retries where there are none, or a real account's token
        # fetched from Google. The emulator needs none: Beam connects anonymously at once.
        from apache_beam.internal.gcp import auth

        mp.setattr(auth._Credentials, "_credentials_init", True)
        mp.setattr(auth._Credentials, "_credentials", None)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("gcp-storage-emulator did not start")
                time.sleep(0.1)
        yield storage.Client().bucket(GCS_BUCKET)
    finally:
        proc.terminate()
        proc.wait(10)
        mp.undo()


@pytest.fixture
def fnapi_options() -> PipelineOptions:
    return PipelineOptions(["--runner=FnApiRunner"])


def hsc_csv(header: list[str], rows: list[str], meta: int = 2) -> bytes:
    """A small HSC-export style CSV: `meta` '#' lines, a '# ' header, then `rows` verbatim."""
    lines = [f"# metadata line {i}" for i in range(meta)]
    lines.append("# " + ",".join(header))
    return ("\n".join(lines + rows) + "\n").encode()


def galaxy_targets(sky) -> list:
    """The galaxies of a synthetic sky as cutout-client Targets, in truth-table order."""
    from galaxiesml.hsc.cutout_client import Target

    return [Target(t["object_id"], t["ra"], t["dec"]) for t in sky.truth.to_pylist() if t["kind"] == "galaxy"]
