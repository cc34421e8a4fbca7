"""The gs:// path: released files uploaded with google-cloud-storage's resumable upload, against a
gcp-storage-emulator started on 127.0.0.1 by the test (conftest's gcs_emulator; never real GCS)."""
from __future__ import annotations

import hashlib
import os

from galaxiesml.hdf5 import hdf5_name
from galaxiesml.schema import SPLITS
from galaxiesml.storage import upload
from tests.galaxy_shards import write_shards
from tests.test_hdf5 import run_consolidate


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_is_resumable_in_chunks(gcs_emulator, tmp_path):
    bucket = gcs_emulator
    local = tmp_path / "blob.bin"
    local.write_bytes(os.urandom(5 * 256 * 1024 + 123))  # six chunks of 256 KiB, the last short
    assert upload(str(local), f"gs://{bucket.name}/x/blob.bin", chunk_size=256 * 1024) == f"gs://{bucket.name}/x/blob.bin"
    assert _sha(bucket.blob("x/blob.bin").download_as_bytes()) == _sha(local.read_bytes())


def test_consolidate_writes_the_released_files_to_gcs(gcs_emulator, tmp_path):
    bucket = gcs_emulator
    counts = {"training": 24, "validation": 8, "testing": 8}
    shards = write_shards(tmp_path / "in", counts, shards=2, seed=3)
    all_shards = [p for s in SPLITS for p in shards[s]]
    run_consolidate(all_shards, f"gs://{bucket.name}/build")
    run_consolidate(all_shards, str(tmp_path / "local"))
    names = {b.name for b in bucket.list_blobs(prefix="build/")}
    expected = {f"build/hdf5/{hdf5_name(size, s)}" for s in SPLITS for size in (127, 64)}
    assert expected | {f"build/csv/{s}.csv" for s in SPLITS} == names
    for name in sorted(names):
        local = tmp_path / "local" / name.removeprefix("build/")
        assert _sha(bucket.blob(name).download_as_bytes()) == _sha(local.read_bytes()), name
