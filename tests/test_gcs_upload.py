"""The gs:// path: released files uploaded with google-cloud-storage's resumable upload, against a
gcp-storage-emulator started on 127.0.0.1 by the test (never real GCS)."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

storage = pytest.importorskip("google.cloud.storage")
if shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable)) is None:
    pytest.skip("gcp-storage-emulator is not installed", allow_module_level=True)

from galaxiesml.hdf5 import hdf5_name  # noqa: E402
from galaxiesml.schema import SPLITS  # noqa: E402
from galaxiesml.storage import upload  # noqa: E402
from tests.galaxy_shards import write_shards  # noqa: E402
from tests.test_hdf5 import run_consolidate  # noqa: E402

BUCKET = "galaxiesml-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    """An in-memory emulator with BUCKET, and STORAGE_EMULATOR_HOST pointing at it."""
    port = _free_port()
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator"), "start",
         "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--default-bucket", BUCKET, "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host = f"http://127.0.0.1:{port}"
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("gcp-storage-emulator did not start")
                time.sleep(0.1)
        yield storage.Client().bucket(BUCKET)
    finally:
        proc.terminate()
        proc.wait(10)
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_is_resumable_in_chunks(emulator, tmp_path):
    local = tmp_path / "blob.bin"
    local.write_bytes(os.urandom(5 * 256 * 1024 + 123))  # six chunks of 256 KiB, the last short
    assert upload(str(local), f"gs://{BUCKET}/x/blob.bin", chunk_size=256 * 1024) == f"gs://{BUCKET}/x/blob.bin"
    assert _sha(emulator.blob("x/blob.bin").download_as_bytes()) == _sha(local.read_bytes())


def test_consolidate_writes_the_released_files_to_gcs(emulator, tmp_path):
    counts = {"training": 24, "validation": 8, "testing": 8}
    shards = write_shards(tmp_path / "in", counts, shards=2, seed=3)
    all_shards = [p for s in SPLITS for p in shards[s]]
    run_consolidate(all_shards, f"gs://{BUCKET}/build")
    run_consolidate(all_shards, str(tmp_path / "local"))
    names = {b.name for b in emulator.list_blobs(prefix="build/")}
    expected = {f"build/hdf5/{hdf5_name(size, s)}" for s in SPLITS for size in (127, 64)}
    assert expected | {f"build/csv/{s}.csv" for s in SPLITS} == names
    for name in sorted(names):
        local = tmp_path / "local" / name.removeprefix("build/")
        assert _sha(emulator.blob(name).download_as_bytes()) == _sha(local.read_bytes()), name
