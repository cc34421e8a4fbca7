"""The das_cutout client against the loopback stand-in: batching under the row limit, lineno
mapping, missing coverage, auth, 406, stream limit, and retrieval through injected faults."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from galaxiesml.hsc.catalog_client import CatalogClient
from galaxiesml.hsc.credentials import Credentials, HscAuthError
from galaxiesml.hsc.cutout_client import (
    CutoutClient,
    CutoutRow,
    HscRequestError,
    Target,
    check_member,
    list_file,
)
from galaxiesml.hsc.format import BAND_OF_FILTER, FILTERS, PIXEL_SCALE, parse_member_name
from galaxiesml.schema import BANDS
from galaxiesml.sky import make_sky
from galaxiesml.standins.cutout_service import (
    CutoutCache,
    CutoutServer,
    CutoutService,
    ListFileError,
    POOL_INDEX,
    PoolCache,
    parse_half_size,
    parse_list_file,
    prerender,
)
from galaxiesml.standins.faults import FAULT_KINDS, Faults
from tests.conftest import galaxy_targets

PASSWORD = "pw-Zq93!secret"
CREDS = Credentials("alice", PASSWORD)
HALF = 1.5  # arcsec: 17 x 17 pixel stamps keep the test fast


@pytest.fixture(scope="module")
def sky_rows():
    return make_sky(1000, seed=7, patch_px=1000, empty_share=0.1, band_gap_share=0.05, old_filter_share=0.1)


@pytest.fixture(scope="module")
def targets(sky_rows):
    return galaxy_targets(sky_rows[0])


@pytest.fixture(scope="module")
def cache(sky_rows, targets):
    """Every cutout in the main filters, rendered once (in two processes) and shared by the servers
    below (HSC-R2 / HSC-I2 fallbacks render on demand)."""
    cache = CutoutCache()
    rows = [CutoutRow(t.object_id, t.ra, t.dec, f, HALF) for t in targets for f in FILTERS.values()]
    keys = [r.key for r in parse_list_file(list_file(rows), max_rows=len(rows))]
    prerender(sky_rows[0], keys, cache, workers=2)
    return cache


@pytest.fixture(scope="module")
def server(sky_rows, cache):
    with CutoutServer(CutoutService(sky_rows[0], CREDS, cache=cache)) as srv:
        yield srv


def _client(url: str, **kw) -> CutoutClient:
    return CutoutClient(CREDS, url=url, backoff_s=0.001, max_backoff_s=0.01, timeout=(5, 30), **kw)


def _expected(sky_rows) -> dict[int, dict[str, object]]:
    """object_id -> band -> filter that covers it ('' where nothing does), and its pixel x, y."""
    return {
        t["object_id"]: {**{b: t[f"filter_{b}"] for b in BANDS}, "xy": (t["x"], t["y"])}
        for t in sky_rows[0].truth.to_pylist()
        if t["kind"] == "galaxy"
    }


def _assert_right_object(data: bytes, target: Target, filter_name: str, xy=None, full: bool = True) -> None:
    """The cutout is of this filter and covers the target: its pixel origin (LTV cards) puts the
    target's sky pixel `xy` inside it, near the centre unless cut short; with `full`, the WCS
    also maps the target's position into the stamp within half a pixel of a pixel centre."""
    with fits.open(io.BytesIO(data)) as hdul:
        assert hdul[0].header["FILTER"] == filter_name
        h = hdul[1].header
        nx, ny = h["NAXIS1"], h["NAXIS2"]
        assert ny <= 17 and nx <= 17
        if xy is not None:
            x, y = xy[0] + h["LTV1"], xy[1] + h["LTV2"]
            assert -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5
            assert nx < 17 or abs(x - 8) <= 0.5
            assert ny < 17 or abs(y - 8) <= 0.5
        if full:
            w = WCS(h)
            np.testing.assert_allclose(proj_plane_pixel_scales(w) * 3600, PIXEL_SCALE)
            x, y = w.world_to_pixel_values(target.ra, target.dec)
            assert -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5


def test_thousand_galaxies_batched_matched_and_missing_reported(server, sky_rows, targets):
    expected = _expected(sky_rows)
    with _client(server.url) as client:
        before = len(server.service.request_rows)
        results = list(client.fetch_galaxies(targets, half_width=HALF))
    sent = server.service.request_rows[before:]
    assert len(results) == len(targets) == 1000
    # 198 galaxies x 5 bands per request (the smaller ones ask again in HSC-R2 / HSC-I2)
    assert max(sent) <= 990 and sent.count(990) == 5 and sent.count(50) >= 1
    assert sum(sent) == 5000 + sum(n for n in sent if n not in (990, 50))
    n_missing = n_fallback = 0
    for target, got in zip(targets, results):
        assert got.object_id == target.object_id and not got.failed
        want = expected[target.object_id]
        assert sorted(got.missing) == sorted(b for b in BANDS if want[b] == "")
        assert set(got.cutouts) == {b for b in BANDS if want[b]}
        for band, data in got.cutouts.items():
            assert got.filters[band] == want[band]
            _assert_right_object(data, target, want[band], want["xy"], full=target.object_id % 10 == 0)
        n_missing += bool(got.missing)
        n_fallback += any(f in ("HSC-R2", "HSC-I2") for f in got.filters.values())
    assert n_missing > 20 and n_fallback > 20  # the sky really has gaps and old-filter patches


def test_members_are_matched_by_lineno_not_order(server, targets):
    rows = [CutoutRow(t.object_id, t.ra, t.dec, f, HALF) for t in targets[:4] for f in ("HSC-Y", "HSC-G")]
    reply = requests.post(server.url, files={"list": ("l.txt", list_file(rows))}, auth=(CREDS.user, PASSWORD))
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/x-tar"
    assert reply.headers["Content-Disposition"].endswith('.tar"')
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(reply.content))]
    linenos = [parse_member_name(n).lineno for n in names]
    assert linenos != sorted(linenos)  # the archive groups by filter
    assert all(n.startswith("arch-") and n.endswith("-pdr2_wide.fits") for n in names)
    with _client(server.url) as client:
        for res in client.fetch_rows(rows):
            if res.status == "ok":
                _assert_right_object(res.data, Target(res.row.object_id, res.row.ra, res.row.dec), res.row.filter)


def test_list_file_protocol_units_optional_columns_and_planes(server, sky_rows, targets):
    expected = _expected(sky_rows)
    t = next(t for t in targets if all(expected[t.object_id].values()) and expected[t.object_id]["i"] == "HSC-I")
    text = (
        "#? rerun filter ra dec sw sh image mask variance type tract\n"
        f"pdr2_wide HSC-I {t.ra} {t.dec} 2asec 0.05amin true true true coadd {sky_rows[0].layout.tract} # {t.object_id}\n"
        "\n"
        f"pdr2_wide HSC-I {t.ra} {t.dec} 0.0005deg 1arcsec false false true coadd {sky_rows[0].layout.tract}\n"
        f"pdr2_wide HSC-I 10.0 -40.0 2asec 2asec true true true coadd {sky_rows[0].layout.tract} # nowhere\n"
        f"pdr2_wide HSC-I {t.ra} {t.dec} 2asec 2asec true false false coadd 1 # other tract\n"
    )
    reply = requests.post(server.url, files={"list": ("l.txt", text)}, auth=(CREDS.user, PASSWORD))
    members = {parse_member_name(m.name).lineno: tar_bytes for m, tar_bytes in _members(reply.content)}
    assert sorted(members) == [2, 4]  # line 3 is blank; lines 5 and 6 have no coverage
    with fits.open(io.BytesIO(members[2])) as hdul:
        assert [h.header["EXTTYPE"] for h in hdul[1:]] == ["IMAGE", "MASK", "VARIANCE"]
        assert hdul[1].data.shape == (2 * 17 + 1, 2 * 11 + 1)  # sh = 0.05 amin = 3", sw = 2"
        assert hdul[1].data.dtype.str == ">f4" and hdul[2].data.dtype.str == ">i4"
        np.testing.assert_allclose(proj_plane_pixel_scales(WCS(hdul[1].header)) * 3600, 0.168)
    with fits.open(io.BytesIO(members[4])) as hdul:
        assert [h.header["EXTTYPE"] for h in hdul[1:]] == ["VARIANCE"]
        assert hdul[1].data.shape == (2 * 5 + 1, 2 * 10 + 1)
    assert parse_half_size("10asec") == 10.0 and parse_half_size("0.5amin") == 30.0
    assert parse_half_size("0.001deg") == pytest.approx(3.6) and parse_half_size("3arcsec") == 3.0
    for bad in ("10", "10pix", "-1asec", "1000deg"):
        with pytest.raises(ListFileError):
            parse_half_size(bad)


def _members(tar: bytes):
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return [(m, t.extractfile(m).read()) for m in t.getmembers()]


def test_empty_tar_when_nothing_is_covered(server):
    rows = [CutoutRow(k, 10.0 + k, -40.0, "HSC-G", HALF) for k in range(3)]
    reply = requests.post(server.url, files={"list": ("l.txt", list_file(rows))}, auth=(CREDS.user, PASSWORD))
    assert reply.status_code == 200 and _members(reply.content) == []
    with _client(server.url) as client:
        assert [r.status for r in client.fetch_rows(rows)] == ["missing"] * 3


@pytest.mark.parametrize(
    "text",
    [
        "rerun filter ra dec sw sh\npdr2_wide HSC-G 150 2 2asec 2asec\n",  # no '#?'
        "#? rerun filter ra dec sw\npdr2_wide HSC-G 150 2 2asec\n",  # sh missing
        "#? rerun filter ra dec sw sh\npdr2_wide HSC-G 150 2 2asec\n",  # too few fields
        "#? rerun filter ra dec sw sh\npdr2_wide HSC-Q 150 2 2asec 2asec\n",  # unknown filter
        "#? rerun filter ra dec sw sh\npdr2_wide HSC-G 150 2 2 2\n",  # no units
        "#? rerun filter ra dec sw sh\n" + "pdr2_wide HSC-G 150 2 2asec 2asec\n" * 1001,  # over 1000 rows
    ],
)
def test_malformed_or_oversized_lists_get_406(server, text):
    reply = requests.post(server.url, files={"list": ("l.txt", text)}, auth=(CREDS.user, PASSWORD))
    assert reply.status_code == 406


def test_a_thousand_rows_are_accepted(server):
    text = "#? rerun filter ra dec sw sh\n" + "pdr2_wide HSC-G 10 -40 2asec 2asec\n" * 1000
    assert requests.post(server.url, files={"list": ("l.txt", text)}, auth=(CREDS.user, PASSWORD)).status_code == 200


def test_406_raises_a_clear_error(sky_rows, cache, targets):
    with CutoutServer(CutoutService(sky_rows[0], CREDS, cache=cache, max_rows=10)) as srv:
        with _client(srv.url, rows_per_request=20) as client:
            with pytest.raises(HscRequestError, match="406"):
                client.fetch_rows([CutoutRow(t.object_id, t.ra, t.dec, "HSC-G", HALF) for t in targets[:20]])


def test_bad_password_raises_without_leaking_it(server, targets, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = Credentials("alice", "Wrong-" + PASSWORD)
    client = CutoutClient(wrong, url=server.url, backoff_s=0.001)
    with pytest.raises(HscAuthError) as err:
        client.fetch_rows([CutoutRow(targets[0].object_id, targets[0].ra, targets[0].dec, "HSC-G", HALF)])
    assert "401" in str(err.value) and "alice" in str(err.value)
    for text in (str(err.value), repr(err.value), repr(client), repr(wrong), str(wrong), caplog.text):
        assert PASSWORD not in text
    assert requests.post(server.url, files={"list": ("l.txt", "#? rerun\n")}).status_code == 401


def test_credentials_from_environment():
    env = {"HSC_SSP_CAS_USER": "u1", "HSC_SSP_CAS_PASSWORD": "p1", "SSP_PDR_USR": "u2", "SSP_PDR_PWD": "p2"}
    assert Credentials.from_env(env) == Credentials("u1", "p1")
    assert Credentials.from_env({"SSP_PDR_USR": "u2", "SSP_PDR_PWD": "p2"}) == Credentials("u2", "p2")
    with pytest.raises(HscAuthError, match="HSC_SSP_CAS_PASSWORD"):
        Credentials.from_env({"HSC_SSP_CAS_USER": "u1"})


def test_more_than_two_streams_get_503(sky_rows, cache, targets):
    service = CutoutService(sky_rows[0], CREDS, Faults(slow=1.0, slow_seconds=0.6), cache=cache)
    rows = [CutoutRow(targets[0].object_id, targets[0].ra, targets[0].dec, "HSC-G", HALF)]
    codes: list[int] = []
    with CutoutServer(service) as srv:
        def post() -> None:
            r = requests.post(srv.url, files={"list": ("l.txt", list_file(rows))}, auth=(CREDS.user, PASSWORD))
            codes.append(r.status_code)
        threads = [threading.Thread(target=post) for _ in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert sorted(codes) == [200, 200, 503]


def test_every_covered_galaxy_retrieved_through_20_percent_faults(sky_rows, cache, targets):
    expected = _expected(sky_rows)
    faults = Faults.spread(0.2, seed=3, slow_seconds=0.05)
    with CutoutServer(CutoutService(sky_rows[0], CREDS, faults, cache=cache)) as srv:
        with _client(srv.url, rows_per_request=50, max_retries=8) as client:
            results = list(client.fetch_galaxies(targets[:400], half_width=HALF))
            stats = dict(client.stats)
        counts = srv.service.faults.counts
    assert sum(counts.values()) >= 8 and sum(v > 0 for v in counts.values()) >= 5, counts
    assert stats["retries"] >= sum(counts[k] for k in FAULT_KINDS if k != "slow")
    for target, got in zip(targets, results):
        want = expected[target.object_id]
        assert not got.failed
        assert set(got.cutouts) == {b for b in BANDS if want[b]}
        for band, data in got.cutouts.items():
            _assert_right_object(data, target, want[band], want["xy"], full=False)


def test_damaged_members_are_rejected(sky_rows, targets):
    t = targets[0]
    row = CutoutRow(t.object_id, t.ra, t.dec, "HSC-G", HALF)
    cut = sky_rows[0].cutout("HSC-G", t.ra, t.dec, HALF) or sky_rows[0].cutout("HSC-Z", t.ra, t.dec, HALF)
    data = cut.fits_bytes()
    assert check_member(data, row, ("image",)) is None
    assert "FITS blocks" in check_member(data[:-1000], row, ("image",))
    assert "unreadable" in check_member(b"CORRUPT!" * 10 + data[80:], row, ("image",))
    assert "HDUs" in check_member(data, row, ("image", "mask"))
    small = CutoutRow(t.object_id, t.ra, t.dec, "HSC-G", 0.5)
    assert "shape" in check_member(data, small, ("image",))


def test_command_line_starts_both_standins(tmp_path):
    env = {**os.environ, "HSC_SSP_CAS_USER": "carol", "HSC_SSP_CAS_PASSWORD": PASSWORD}
    cmd = [sys.executable, "-m", "galaxiesml.standins", "--galaxies", "60", "--seed", "3", "--write-sky", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        printed = dict(proc.stdout.readline().split(": ", 1) for _ in range(5))
        urls = {k: v.strip() for k, v in printed.items()}
        assert urls["das_cutout"].startswith("http://127.0.0.1:") and urls["das_cutout"].endswith("/cgi-bin/cutout")
        truth = pq.read_table(urls["truth file"]).to_pylist()
        galaxy = next(t for t in truth if t["kind"] == "galaxy" and t["filter_g"] == "HSC-G")
        creds = Credentials("carol", PASSWORD)
        with CutoutClient(creds, url=urls["das_cutout"], backoff_s=0.01) as client:
            (got,) = client.fetch_galaxies([Target(galaxy["object_id"], galaxy["ra"], galaxy["dec"])], bands=("g",))
        assert set(got.cutouts) == {"g"}
        path = CatalogClient(creds, url=urls["catalog"], poll_initial_s=0.05).run_query(tmp_path / "q.csv")
        def data_lines(text: str) -> list[str]:
            return [line for line in text.splitlines() if not line.startswith("#")]

        served = data_lines(path.read_text())
        assert len(served) > 60 and served == data_lines(Path(urls["catalog file"]).read_text())
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_fault_on_every_request_never_passes_for_missing_coverage(sky_rows, cache, targets, kind):
    """With one kind of fault on every reply, a covered row ends `ok` (a clean part of a damaged
    reply) or `failed`, never `missing`; only slow replies give everything."""
    expected = _expected(sky_rows)
    rows = [CutoutRow(t.object_id, t.ra, t.dec, FILTERS[b], HALF) for t in targets[:30] for b in ("g", "z")]
    service = CutoutService(sky_rows[0], CREDS, Faults(**{kind: 1.0}, slow_seconds=0.01, seed=1), cache=cache)
    with CutoutServer(service) as srv, _client(srv.url, max_retries=2) as client:
        results = client.fetch_rows(rows)
    statuses = {r.status for r in results}
    for r in results:
        covered = expected[r.row.object_id][BAND_OF_FILTER[r.row.filter]] == r.row.filter
        if covered:
            assert r.status in (("ok",) if kind == "slow" else ("ok", "failed"))
        elif kind == "slow":
            assert r.status == "missing"
    if kind == "slow":
        assert "failed" not in statuses and "missing" in statuses
    elif kind in ("http_502", "http_503", "drop"):
        assert statuses == {"failed"} and client.stats["requests"] == 3
    else:
        assert "failed" in statuses


def test_pool_answers_any_position_with_a_pool_galaxy_moved_onto_it(tmp_path, sky_rows, cache, targets):
    """PoolCache (for skies too large to render): any requested position gets the pixels of a pool
    galaxy, picked by a hash of the position, with a WCS that puts the requested position where the
    pool galaxy is."""
    rows = [CutoutRow(t.object_id, t.ra, t.dec, "HSC-I", HALF) for t in targets[:40]]
    keys = [k for k in (r.key for r in parse_list_file(list_file(rows), max_rows=len(rows))) if cache.get(k)[1]][:3]
    pool_cache = CutoutCache(tmp_path)
    for k in keys:
        pool_cache.put(k, cache.get(k)[1])
    (tmp_path / POOL_INDEX).write_text(json.dumps({"half_width": HALF, "positions": [[k.ra, k.dec] for k in keys]}))
    pool = PoolCache(tmp_path)

    def image_and_pixel(data: bytes, ra: float, dec: float):
        with fits.open(io.BytesIO(data)) as hdul:
            hdu = next(h for h in hdul if "CRVAL1" in h.header)
            return hdu.data.copy(), WCS(hdu.header).world_to_pixel_values(ra, dec)

    pool_images = [image_and_pixel(cache.get(k)[1], k.ra, k.dec) for k in keys]
    picked = set()
    for ra, dec in [(150.3, 2.4), (149.7, 1.9), (150.05, 2.21), (151.0, 3.0), (149.9, 2.05)]:
        request = keys[0]._replace(ra=ra, dec=dec)
        found, data = pool.get(request)
        assert found and data is not None and pool.get(request) == (found, data)  # the same pick every time
        image, (x, y) = image_and_pixel(data, ra, dec)
        match = [k for k, (pixels, _) in enumerate(pool_images) if np.array_equal(pixels, image)]
        assert len(match) == 1
        x0, y0 = pool_images[match[0]][1]
        assert (float(x), float(y)) == pytest.approx((float(x0), float(y0)), abs=1e-6)
        picked.add(match[0])
    assert len(picked) > 1
    with pytest.raises(AssertionError):
        pool.put(keys[0], b"")


class _Raw:
    """A reply body that arrives in reads of at most `piece` bytes and, with `break_at`, breaks off
    there the way a dropped chunked transfer does."""

    def __init__(self, body: bytes, piece: int = 64 * 1024, break_at: int | None = None):
        self._body, self._piece, self._break_at, self._pos = body, piece, break_at, 0

    def read(self, n: int) -> bytes:
        if self._break_at is not None and self._pos >= self._break_at:
            raise requests.exceptions.ChunkedEncodingError("connection broken: IncompleteRead")
        end = min(self._pos + n, self._pos + self._piece, self._break_at or len(self._body))
        out = self._body[self._pos : end]
        self._pos = end
        return out

    def close(self) -> None:
        pass


class _TarSession:
    """A requests.Session stand-in whose replies are real requests.Response objects over `_Raw`
    bodies: the tar of the cutouts each posted list asks for, made by `archive(lines)`; reply k
    is read as `raw_args[k]` says (whole, in 64-KB reads, where the list is shorter)."""

    def __init__(self, archive, raw_args: tuple[dict, ...] = ()):
        self.archive, self.raw_args, self.posted, self.auth = archive, list(raw_args), [], None

    def post(self, url, files, timeout, stream=False):
        lines = files["list"][1].decode().splitlines()[1:]
        self.posted.append(len(lines))
        reply = requests.Response()
        reply.status_code = 200
        reply.raw = _Raw(self.archive(lines), **(self.raw_args.pop(0) if self.raw_args else {}))
        return reply

    def close(self) -> None:
        pass


def _archive(lines: list[str]) -> bytes:
    """A tar of one 127 x 127 FITS cutout per list line, as das_cutout names them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for lineno, line in enumerate(lines, start=2):
            filter_name = line.split()[1]
            hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.full((127, 127), lineno, np.float32))])
            hdul[0].header["FILTER"] = filter_name
            data = io.BytesIO()
            hdul.writeto(data)
            info = tarfile.TarInfo(f"arch-1-1/{lineno}-cutout-{filter_name}-9813-pdr2_wide.fits")
            info.size = len(data.getvalue())
            tar.addfile(info, io.BytesIO(data.getvalue()))
    return buf.getvalue()


def _rows(n: int) -> list[CutoutRow]:
    return [CutoutRow(k, 150 + k * 1e-3, 2.0, "HSC-G") for k in range(n)]


def test_a_reply_is_read_as_it_arrives_not_held_beside_its_members():
    """The tar body is parsed from the socket member by member: while a request is read, memory
    holds its members (which the caller gets) and little more, not the body besides."""
    import tracemalloc

    rows = _rows(150)
    body = _archive(list_file(rows).splitlines()[1:])  # made before tracing: the server's copy
    session = _TarSession(lambda lines: body)
    client = CutoutClient(CREDS, url="http://127.0.0.1:9/cutout", session=session)
    tracemalloc.start()
    try:
        results = client.fetch_batch(rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    members = sum(len(r.data) for r in results)
    assert [r.status for r in results] == ["ok"] * len(rows) and members > 0.9 * len(body)
    assert peak < 1.3 * members, (peak, members)


def test_a_reply_cut_off_midway_keeps_its_whole_members_and_asks_only_for_the_rest():
    rows = _rows(40)
    first = len(_archive(list_file(rows).splitlines()[1:])) // 2 + 777  # inside a member
    session = _TarSession(_archive, raw_args=({"piece": 1001, "break_at": first}, {"piece": 1001}))
    client = CutoutClient(CREDS, url="http://127.0.0.1:9/cutout", session=session, backoff_s=0.001)
    results = client.fetch_batch(rows)
    kept_first = session.posted[0] - session.posted[1]
    assert session.posted[0] == 40 and 15 <= kept_first <= 25 and client.stats["retries"] == 1
    assert [r.status for r in results] == ["ok"] * len(rows)
    for k, r in enumerate(results):  # each row has its own cutout, whichever reply it came in
        with fits.open(io.BytesIO(r.data)) as hdul:
            lineno = int(hdul[1].data[0, 0])
        assert lineno == (k + 2 if k < kept_first else k - kept_first + 2)
