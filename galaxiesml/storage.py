"""Copy a locally written file to its destination on any filesystem.

h5py cannot write to a non-seekable stream, so the released files are written locally first and
copied afterwards. `gs://` destinations go through google-cloud-storage's resumable upload (large
files survive a dropped connection; `STORAGE_EMULATOR_HOST` points the client at an emulator, which
google-cloud-storage honours with anonymous credentials); anything else through Beam's FileSystems,
with `created_atomically`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from typing import BinaryIO, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

#: Resumable upload chunk: a multiple of 256 KiB; bigger means fewer round trips, more memory.
GCS_CHUNK_BYTES = 32 * 1024 * 1024
COPY_BUFFER_BYTES = 16 * 1024 * 1024
#: Filesystems whose objects appear only once their upload completes: no temporary name needed.
OBJECT_STORES = ("gs", "s3", "azfs")
#: A file being written is `<dest>.partial-<random>`: one name per writer, so two builds that share a
#: cache and write the same entry at once never write into one file.
PARTIAL_SUFFIX = ".partial-"


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
    with open(local_path, "rb") as src, created_atomically(dest) as out:
        shutil.copyfileobj(src, out, COPY_BUFFER_BYTES)
    return dest


@contextlib.contextmanager
def created_atomically(dest: str) -> Iterator[BinaryIO]:
    """A new file (any Beam filesystem) that appears at `dest` whole or not at all.

    Object stores publish an object only when its upload completes, so there it is written in
    place. Elsewhere it is written under a temporary name beside it and renamed once closed, so a
    build killed mid-write leaves no truncated file that a resumed build would take for a finished
    one; an earlier file at `dest` is replaced."""
    scheme = FileSystems.get_scheme(dest)
    if scheme in OBJECT_STORES:
        with FileSystems.create(dest, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            yield out
        return
    partial = f"{dest}{PARTIAL_SUFFIX}{uuid.uuid4().hex}"
    try:
        with FileSystems.create(partial, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            yield out
    except BaseException:
        with contextlib.suppress(Exception):
            FileSystems.delete([partial])
        raise
    if scheme not in (None, "file") and FileSystems.exists(dest):
        FileSystems.delete([dest])  # a local rename replaces in one step; others (HDFS) refuse to
    FileSystems.rename([partial], [dest])


#: The least a read of a gs:// file fetches. Beam's GCS reader (FileSystems.open) fetches 16 MiB from
#: wherever a read starts: a whole file of a small mirror, and 16 MiB for each header and each run of
#: stamp rows of a release's ~200 MB patch files. PatchFile reads a header in 2,880-byte blocks, and
#: a run of rows in one read (fetched as asked, whatever its size), so this only has to hold the
#: first two headers, which it reads together.
GCS_READ_AHEAD = 64 * 1024


_THREAD = threading.local()


def _gcsio():
    """This thread's GCS client for open_for_ranges, made again for another job's options or
    another STORAGE_EMULATOR_HOST. Beam makes a new one (a storage client) for every call, ~2.7 ms
    of CPU each, as much as cutting a galaxy-band; a build opens five files per patch group."""
    # the options FileSystems.open gives its GCS filesystem (credentials, retries)
    options = FileSystems._pipeline_options
    key = (id(options), os.environ.get("STORAGE_EMULATOR_HOST"))
    if getattr(_THREAD, "gcsio_key", None) != key:
        from apache_beam.io.gcp.gcsio import GcsIO  # the `gcp` extra

        _THREAD.gcsio, _THREAD.gcsio_key = GcsIO(pipeline_options=options), key
    return _THREAD.gcsio


def open_for_ranges(path: str) -> BinaryIO:
    """`path` opened for reading a few byte ranges of a large file (a coadd patch's headers and
    rows): FileSystems.open's stream, with a read-ahead of GCS_READ_AHEAD (not 16 MiB) on gs://."""
    if FileSystems.get_scheme(path) == "gs":
        return _gcsio().open(path, "rb", read_buffer_size=GCS_READ_AHEAD)
    return FileSystems.open(path)
