"""Copy a locally written file to its destination on any filesystem.

h5py cannot write to a non-seekable stream, so the released files are written locally first and
copied afterwards. `gs://` destinations go through google-cloud-storage's resumable upload (large
files survive a dropped connection; `STORAGE_EMULATOR_HOST` points the client at an emulator, which
google-cloud-storage honours with anonymous credentials); anything else through Beam's FileSystems,
written under a temporary name and renamed so a failed copy never leaves a partial file behind.
"""
from __future__ import annotations

import shutil

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

#: Resumable upload chunk: a multiple of 256 KiB; bigger means fewer round trips, more memory.
GCS_CHUNK_BYTES = 32 * 1024 * 1024
COPY_BUFFER_BYTES = 16 * 1024 * 1024


def join(base: str, *parts: str) -> str:
    """`base`/`parts`: gs:// paths joined without Beam's GCS filesystem (the `gcp` extra), others
    with FileSystems.join."""
    if base.startswith("gs://"):
        return "/".join([base.rstrip("/"), *parts])
    return FileSystems.join(base, *parts)


def split_gcs(path: str) -> tuple[str, str]:
    """gs://bucket/some/key -> (bucket, some/key)."""
    bucket, _, key = path[len("gs://") :].partition("/")
    if not bucket or not key:
        raise ValueError(f"not a gs://bucket/object path: {path}")
    return bucket, key


def upload(local_path: str, dest: str, chunk_size: int = GCS_CHUNK_BYTES) -> str:
    """Copy `local_path` to `dest` (gs://, or any path Beam's FileSystems can create); returns dest."""
    if dest.startswith("gs://"):
        from google.cloud import storage  # the `gcp` extra

        bucket, key = split_gcs(dest)
        blob = storage.Client().bucket(bucket).blob(key, chunk_size=chunk_size)
        blob.upload_from_filename(local_path)
        return dest
    partial = dest + ".partial"
    with open(local_path, "rb") as src, FileSystems.create(
        partial, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
    ) as out:
        shutil.copyfileobj(src, out, COPY_BUFFER_BYTES)
    if FileSystems.exists(dest):
        FileSystems.delete([dest])
    FileSystems.rename([partial], [dest])
    return dest
