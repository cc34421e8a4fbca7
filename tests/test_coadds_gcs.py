"""A coadd mirror on gs:// (conftest's gcs_emulator, never real GCS) gives the dataset the same
mirror gives on local disk, and is read by ranges: what crosses the wire is what the reader asks
for, plus at most a read-ahead per request, never a whole file."""
from __future__ import annotations

import os
import re
import socket
import socketserver
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow.parquet as pq
import pytest

from galaxiesml.coadds import PatchFile, PatchKey, patch_of
from galaxiesml.sky import make_sky, write_sky
from galaxiesml.storage import GCS_READ_AHEAD
from tests.test_coadds import BORDER, _galaxies, build

RERUN = "pdr2_wide"


class CountingRelay:
    """A TCP relay on 127.0.0.1 to the emulator's port, keeping for each connection the head of its
    request, and the head and size of what came back (the emulator answers one request per
    connection)."""

    def __init__(self, port: int):
        self.exchanges: list[tuple[bytes, bytes, int]] = []  # (request head, response head, response bytes)
        lock = threading.Lock()
        exchanges = self.exchanges

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                request, head, size = bytearray(), bytearray(), 0
                with socket.create_connection(("127.0.0.1", port)) as upstream:
                    def forward():
                        try:
                            while data := self.request.recv(1 << 16):
                                request.extend(data[: max(0, 8192 - len(request))])
                                upstream.sendall(data)
                            upstream.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass

                    threading.Thread(target=forward, daemon=True).start()
                    while data := upstream.recv(1 << 16):
                        head.extend(data[: max(0, 8192 - len(head))])
                        size += len(data)
                        self.request.sendall(data)
                with lock:  # the request was whole before the answer began
                    exchanges.append((bytes(request), bytes(head), size))

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def media(self) -> list[tuple[str, bool, int]]:
        """Each object download: (the object's name, whether it asked for a Range, its body's bytes)."""
        out = []
        for request, head, size in self.exchanges:
            line = request.split(b"\r\n", 1)[0].decode()
            if "alt=media" not in line:
                continue  # metadata: exists(), reload()
            name = unquote(urlsplit(line.split()[1]).path.split("/o/", 1)[1])
            ranged = re.search(rb"(?im)^range: *bytes=\d+-\d+\r$", request) is not None
            out.append((name, ranged, size - head.index(b"\r\n\r\n") - 4))
        return out


@pytest.fixture(scope="module")
def builds(gcs_emulator, tmp_path_factory):
    """One synthetic mirror (some patches in HSC-R2 / HSC-I2, one HSC-G file missing), built from
    local disk and from gs://BUCKET/pdr2_wide (through a CountingRelay, counting the bytes PatchFile
    asks for)."""
    from google.cloud import storage

    sky, rows = make_sky(20, seed=23, patch_px=400, empty_share=0.0, band_gap_share=0.0, old_filter_share=0.2)
    root = tmp_path_factory.mktemp("coadds_gcs")
    catalog = write_sky(sky, rows, root / "input")["catalog"]
    mirror = root / "mirror"
    files = sky.write_patches(mirror, border=BORDER, catalogs=True)
    crowded = Counter(rows.column("skymap_id").to_pylist()).most_common(1)[0][0]
    gone = Path(PatchKey("HSC-G", *patch_of(crowded)).path(str(mirror)))
    gone.unlink()
    # through the relay from the start: the emulator writes its own address into an object's
    # mediaLink when it is uploaded, and the client downloads from there
    relay = CountingRelay(urlsplit(os.environ["STORAGE_EMULATOR_HOST"]).port)
    asked: list[int] = []
    read = PatchFile._read

    def counted(self, n):
        data = read(self, n)
        asked.append(len(data))
        return data

    mp = pytest.MonkeyPatch()
    mp.setenv("STORAGE_EMULATOR_HOST", relay.url)
    try:
        bucket = storage.Client().bucket(gcs_emulator.name)
        for path in sorted(p for p in mirror.rglob("*") if p.is_file()):
            bucket.blob(f"{RERUN}/{path.relative_to(mirror).as_posix()}").upload_from_filename(str(path))
        gs_root = f"gs://{bucket.name}/{RERUN}"
        disk = build(root / "from_disk", catalog, "--cutout_source", "coadd", "--coadd_root", str(mirror))
        relay.exchanges.clear()
        mp.setattr(PatchFile, "_read", counted)
        gcs = build(root / "from_gcs", catalog, "--cutout_source", "coadd", "--coadd_root", gs_root)
    finally:
        mp.undo()
        relay.close()
    sizes = {f"{RERUN}/{p.relative_to(mirror).as_posix()}": p.stat().st_size for p in files if p != gone}
    return root, disk, gcs, gs_root, gone.relative_to(mirror).as_posix(), relay, sum(asked), sizes


def test_a_build_from_the_mirror_on_gcs_is_the_build_from_it_on_disk(builds):
    root, disk, gcs, gs_root, gone, *_ = builds
    assert gcs["funnel"] == disk["funnel"] and disk["funnel"]["kept"] >= 10
    a, images_a, var_a = _galaxies(root / "from_disk")
    b, images_b, var_b = _galaxies(root / "from_gcs")
    for column in ("object_id", "split", "filters"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist()
    assert any("HSC-R2" in f or "HSC-I2" in f for f in b.column("filters").to_pylist())  # found by exists() on gs://
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(var_a, var_b)


def test_a_patch_file_missing_on_gcs_fails_its_galaxies_with_the_reason(builds):
    root, disk, gcs, gs_root, gone, *_ = builds
    assert gcs["funnel"]["failed_by_stage"]["cutout"]["no_patch_file"] == gcs["funnel"]["failed"] > 0
    failed = {
        out: pq.read_table(sorted((root / out).glob("catalog/failed-*.parquet"))).sort_by("object_id").to_pylist()
        for out in ("from_disk", "from_gcs")
    }
    assert [r["object_id"] for r in failed["from_gcs"]] == [r["object_id"] for r in failed["from_disk"]]
    missing = f"{gs_root}/{gone} is not in the mirror"
    assert all(r["reason"] == "no_patch_file" and missing in r["detail"] for r in failed["from_gcs"])


def test_the_mirror_on_gcs_is_read_by_ranges_never_whole_files(builds):
    *_, relay, asked, sizes = builds
    downloads = relay.media()
    assert downloads and asked > 0  # the build did read the mirror, on gs://, through the relay
    assert {name for name, _, _ in downloads} <= set(sizes)
    assert all(ranged for _, ranged, _ in downloads)  # no download asked for a whole object
    # a read is one plane's rows at most (a third of a file), or a header and its read-ahead
    assert all(body < sizes[name] / 2 for name, _, body in downloads)
    # the stream fetched what PatchFile asked for, plus at most one read-ahead per request
    fetched = sum(body for _, _, body in downloads)
    assert asked <= fetched <= asked + len(downloads) * GCS_READ_AHEAD, (asked, fetched, len(downloads))
