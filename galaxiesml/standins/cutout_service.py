"""A loopback stand-in of the HSC PDR2 das_cutout service, serving cutouts of a synthetic sky.

It follows docs/hsc-services.md: a multipart POST of a `list` file with HTTP Basic
auth; a `#? rerun filter ra dec sw sh [image mask variance type tract]` header; half sizes with a
unit; at most 1000 rows (406 above, and for any malformed list); an uncompressed tar reply whose
members are `arch-<n>-<n>/<lineno>-cutout-<FILTER>-<tract>-<rerun>.fits`, lineno counting the
header as line 1; a row without coverage is simply missing, and a list without rows gets an empty
tar; 401 for a bad account; 503 when one account has more than `max_streams` requests in flight.
Where the documentation leaves a choice (how a half size is rounded to pixels, the members'
order), a Reading says which this stand-in makes. Faults (502/503, slow replies, dropped
connections, truncated tars, corrupt or short members) are injected from a seeded FaultPlan.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import multiprocessing
import re
import tarfile
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Iterable, NamedTuple

from astropy.io import fits
from astropy.wcs import WCS

from galaxiesml.hsc.credentials import Credentials
from galaxiesml.hsc.format import BAND_OF_FILTER, Rounding, member_name
from galaxiesml.sky import Sky
from galaxiesml.standins.loopback import LoopbackServer, StandinHandler
from galaxiesml.standins.faults import FaultPlan, Faults


CUTOUT_PATH = "/das_cutout/pdr2/cgi-bin/cutout"
#: The most rows one request may carry (clients send at most 990).
MAX_ROWS = 1000
#: The largest half size (arcsec) the stand-in renders; larger requests are refused with 406.
MAX_HALF_SIZE = 120.0
REQUIRED_COLUMNS = ("rerun", "filter", "ra", "dec", "sw", "sh")
OPTIONAL_COLUMNS = ("image", "mask", "variance", "type", "tract")
#: Defaults of the optional columns: the image plane only, coadd, any tract.
DEFAULTS = {"image": "true", "mask": "false", "variance": "false", "type": "coadd", "tract": ""}
UNIT_ARCSEC = {"asec": 1.0, "arcsec": 1.0, "amin": 60.0, "arcmin": 60.0, "deg": 3600.0}
_TRUE = {"true", "on", "yes", "1", "t"}
_FALSE = {"false", "off", "no", "0", "f"}
_SIZE_RE = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)([a-z]+)$")


class ListFileError(ValueError):
    """The uploaded list is malformed (the service answers 406)."""


class CutoutKey(NamedTuple):
    """What determines the bytes of one cutout file."""

    filter: str
    ra: float
    dec: float
    sw: float
    sh: float
    image: bool
    mask: bool
    variance: bool
    rounding: Rounding = "floor"


@dataclass(frozen=True)
class ListRow:
    """One parsed row of an uploaded list; `lineno` counts the `#?` header as line 1."""

    lineno: int
    rerun: str
    key: CutoutKey
    type: str
    tract: int | None


def parse_half_size(text: str) -> float:
    """A half width/height such as `10asec`, `0.5amin` or `0.01deg`, in arcsec."""
    m = _SIZE_RE.match(text.strip().lower())
    if m is None or m.group(2) not in UNIT_ARCSEC:
        raise ListFileError(f"bad size {text!r}: expected a number with a unit (asec, arcsec, amin, deg)")
    value = float(m.group(1)) * UNIT_ARCSEC[m.group(2)]
    if not 0.0 < value <= MAX_HALF_SIZE:
        raise ListFileError(f"size {text!r} out of range (0, {MAX_HALF_SIZE} arcsec]")
    return value


def _flag(text: str, column: str, lineno: int) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ListFileError(f"line {lineno}: {column} must be true or false, not {text!r}")


def parse_list_file(text: str, max_rows: int = MAX_ROWS) -> list[ListRow]:
    """Parse a das_cutout list file, reading every documented form gently: text after `#` is a
    comment (on the `#?` header too, as the archive's own example shows); blank lines and comment
    lines are skipped but counted in line numbers; columns the documentation does not name are
    ignored; a list with no row gets an empty reply. Raises ListFileError for anything malformed."""
    lines = text.splitlines()
    if not lines or not lines[0].lstrip().startswith("#?"):
        raise ListFileError("the first line must be a '#?' column header")
    columns = lines[0].lstrip()[2:].split("#", 1)[0].split()
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing or len(set(columns)) != len(columns):
        raise ListFileError(f"bad header: missing {missing}" if missing else "bad header: a column named twice")
    rows: list[ListRow] = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != len(columns):
            raise ListFileError(f"line {lineno}: {len(fields)} fields for {len(columns)} columns")
        if len(rows) >= max_rows:
            raise ListFileError(f"more than {max_rows} rows")
        v = {**DEFAULTS, **{c: f for c, f in zip(columns, fields) if c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}}
        try:
            ra, dec = float(v["ra"]), float(v["dec"])
        except ValueError:
            raise ListFileError(f"line {lineno}: bad coordinates") from None
        if not (0.0 <= ra <= 360.0 and -90.0 <= dec <= 90.0):
            raise ListFileError(f"line {lineno}: coordinates out of range")
        if v["filter"] not in BAND_OF_FILTER:
            raise ListFileError(f"line {lineno}: unknown filter {v['filter']!r}")
        if v["type"] not in ("coadd", "coadd/bg"):
            raise ListFileError(f"line {lineno}: unsupported type {v['type']!r}")
        try:
            tract = int(v["tract"]) if v["tract"] else None
        except ValueError:
            raise ListFileError(f"line {lineno}: bad tract {v['tract']!r}") from None
        key = CutoutKey(
            v["filter"], ra, dec, parse_half_size(v["sw"]), parse_half_size(v["sh"]),
            _flag(v["image"], "image", lineno), _flag(v["mask"], "mask", lineno),
            _flag(v["variance"], "variance", lineno),
        )
        if not (key.image or key.mask or key.variance):
            raise ListFileError(f"line {lineno}: no plane asked for")
        rows.append(ListRow(lineno, v["rerun"], key, v["type"], tract))
    return rows


class CutoutCache:
    """Rendered cutout files keyed by CutoutKey, in memory or as files in `directory` (so several
    servers, or runs, can share pre-rendered pixels). A key without coverage is cached too."""

    _NONE = b""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[CutoutKey, bytes] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _name(key: CutoutKey) -> str:
        text = f"{key.filter}|{key.ra:.9f}|{key.dec:.9f}|{key.sw:.6f}|{key.sh:.6f}|{key.image:d}{key.mask:d}{key.variance:d}"
        text += "" if key.rounding == "floor" else f"|{key.rounding}"
        return hashlib.sha1(text.encode()).hexdigest()

    def get(self, key: CutoutKey) -> tuple[bool, bytes | None]:
        """(found, FITS bytes or None for no coverage)."""
        with self._lock:
            if key in self._memory:
                data = self._memory[key]
                return True, (data or None)
        if self.directory is not None:
            path = self.directory / f"{self._name(key)}.fits"
            if path.exists():
                data = path.read_bytes()
                return True, (data or None)
        return False, None

    def put(self, key: CutoutKey, data: bytes | None) -> None:
        if self.directory is not None:
            path = self.directory / f"{self._name(key)}.fits"
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data or self._NONE)
            tmp.replace(path)
        else:
            with self._lock:
                self._memory[key] = data or self._NONE

    def __len__(self) -> int:
        if self.directory is not None:
            return sum(1 for _ in self.directory.glob("*.fits"))
        return len(self._memory)


POOL_INDEX = "pool.json"


class PoolCache(CutoutCache):
    """Answers any position from the pool: the cutouts of the pool position picked by a hash of the
    requested one, with the WCS moved so that the requested position falls where the pool's galaxy
    was (CRVAL = requested ra, dec; CRPIX = the pool galaxy's pixel), which is all the client reads
    to place the galaxy. Serving costs a copy and four 80-byte header cards per HDU, so a sky of any
    size is served without rendering and without competing with a benchmark's workers for the CPU.
    The pool is a CutoutCache directory plus POOL_INDEX listing its positions and half width
    (benchmarks/standin.py build_pool makes one)."""

    def __init__(self, pool_dir: str | Path):
        super().__init__(pool_dir)
        index = json.loads((Path(pool_dir) / POOL_INDEX).read_text())
        self.positions = [tuple(p) for p in index["positions"]]
        self._entries: dict[CutoutKey, tuple[bytes, list[tuple[int, bytes, float | None]]] | None] = {}

    def _entry(self, pool_key: CutoutKey):
        """(bytes, [(card offset, keyword, new CRPIX or None)]) of a pool cutout, or None without
        coverage; memoised."""
        if pool_key not in self._entries:
            _, data = super().get(pool_key)
            entry = None
            if data:
                cards = []
                with fits.open(io.BytesIO(data)) as hdul:
                    for i, hdu in enumerate(hdul):
                        if "CRVAL1" not in hdu.header:
                            continue
                        x, y = WCS(hdu.header).world_to_pixel_values(pool_key.ra, pool_key.dec)
                        info = hdul.fileinfo(i)
                        start, stop = info["hdrLoc"], info["datLoc"]
                        for off in range(start, stop, 80):
                            word = data[off : off + 8].rstrip()
                            if word in (b"CRVAL1", b"CRVAL2", b"CRPIX1", b"CRPIX2"):
                                cards.append((off, word, {b"CRPIX1": float(x) + 1, b"CRPIX2": float(y) + 1}.get(word)))
                entry = (data, cards)
            self._entries[pool_key] = entry
        return self._entries[pool_key]

    def get(self, key: CutoutKey) -> tuple[bool, bytes | None]:
        pick = zlib.crc32(f"{key.ra:.8f},{key.dec:.8f}".encode()) % len(self.positions)
        ra0, dec0 = self.positions[pick]
        entry = self._entry(key._replace(ra=float(f"{ra0:.8f}"), dec=float(f"{dec0:.8f}")))
        if entry is None:
            return True, None
        data, cards = entry
        out = bytearray(data)
        for off, word, pixel in cards:
            value = {b"CRVAL1": key.ra, b"CRVAL2": key.dec}.get(word, pixel)
            out[off : off + 80] = fits.Card(word.decode(), value).image.encode()
        return True, bytes(out)

    def put(self, key: CutoutKey, data: bytes | None) -> None:
        raise AssertionError("the pool answers every key; nothing is rendered while serving")


def render_fits(sky: Sky, key: CutoutKey) -> bytes | None:
    """The FITS file das_cutout would return for `key`, or None without coverage."""
    cutout = sky.cutout(key.filter, key.ra, key.dec, key.sw, key.sh, rounding=key.rounding)
    return None if cutout is None else cutout.fits_bytes(key.image, key.mask, key.variance)


_FORKED_SKY: Sky | None = None


def _render_in_worker(key: CutoutKey) -> bytes | None:
    assert _FORKED_SKY is not None
    return render_fits(_FORKED_SKY, key)


def prerender(sky: Sky, keys: Iterable[CutoutKey], cache: CutoutCache, workers: int = 1) -> int:
    """Render `keys` into `cache` ahead of time (so serving them costs little CPU), in `workers`
    forked processes (the sky is deterministic, so any process renders the same pixels); returns
    how many were rendered."""
    global _FORKED_SKY
    todo = [k for k in dict.fromkeys(keys) if not cache.get(k)[0]]
    if workers <= 1 or len(todo) < 2 * workers:
        for key in todo:
            cache.put(key, render_fits(sky, key))
        return len(todo)
    _FORKED_SKY = sky
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for key, data in zip(todo, pool.map(_render_in_worker, todo, chunksize=64)):
                cache.put(key, data)
    finally:
        _FORKED_SKY = None
    return len(todo)


@dataclass(frozen=True)
class Reading:
    """The choices the documented protocol leaves to the service, as this stand-in makes them:
    how a half size becomes pixels (see galaxiesml.sky.cutout_pixels) and the order of the tar's
    members ("filter": by filter, then list line; "reversed"; "line": by list line). The client
    must take any of them."""

    rounding: Rounding = "floor"
    member_order: str = "filter"


class CutoutService:
    """The service behind the HTTP front: account check, stream limit, rows to tar, faults."""

    def __init__(
        self,
        sky: Sky,
        credentials: Credentials,
        faults: Faults = Faults(),
        cache: CutoutCache | None = None,
        max_streams: int = 2,
        max_rows: int = MAX_ROWS,
        reading: Reading = Reading(),
    ):
        if reading.member_order not in ("filter", "reversed", "line"):
            raise ValueError(f"unknown member order {reading.member_order!r}")
        self.reading = reading
        self.sky = sky
        self._credentials = credentials
        self.faults = FaultPlan(faults)
        self.cache = cache if cache is not None else CutoutCache()
        self.max_streams = max_streams
        self.max_rows = max_rows
        self._streams: dict[str, int] = {}
        self._lock = threading.Lock()
        self._archives = 0
        self.stats: dict[str, int] = {"requests": 0, "rows": 0, "members": 0, "rendered": 0}
        self.status_counts: dict[int, int] = {}
        #: Rows of every parsed request, in arrival order.
        self.request_rows: list[int] = []

    def authorised(self, header: str | None) -> str | None:
        """The account name when the Authorization header matches the account, else None."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        ok = hmac.compare_digest(user.encode(), self._credentials.user.encode()) & hmac.compare_digest(
            password.encode(), self._credentials.password.encode()
        )
        return user if ok else None

    def open_stream(self, user: str) -> bool:
        """Count a request in flight for `user`; False (and nothing counted) beyond max_streams."""
        with self._lock:
            if self._streams.get(user, 0) >= self.max_streams:
                return False
            self._streams[user] = self._streams.get(user, 0) + 1
            return True

    def close_stream(self, user: str) -> None:
        with self._lock:
            self._streams[user] -= 1

    def cutout_bytes(self, key: CutoutKey) -> bytes | None:
        key = key._replace(rounding=self.reading.rounding)
        found, data = self.cache.get(key)
        if not found:
            data = render_fits(self.sky, key)
            self.cache.put(key, data)
            with self._lock:
                self.stats["rendered"] += 1
        return data

    def archive(self, rows: list[ListRow], fault: str | None = None) -> tuple[str, bytes]:
        """(archive name, tar bytes) answering `rows`; members grouped by filter, then line."""
        with self._lock:
            self._archives += 1
            number = self._archives
        arch = f"arch-{time.strftime('%y%m%d')}-{number:06d}"
        members: list[tuple[str, int, str, bytes]] = []
        for row in rows:
            data = self.cutout_bytes(row.key) if row.rerun == self.sky.layout.rerun else None
            if data is None or (row.tract is not None and row.tract != self.sky.layout.tract):
                continue
            name = member_name(arch, row.lineno, row.key.filter, self.sky.layout.tract, row.rerun)
            members.append((row.key.filter, row.lineno, name, data))
        members.sort(key=lambda m: (m[1],) if self.reading.member_order == "line" else (m[0], m[1]))
        if self.reading.member_order == "reversed":
            members.reverse()
        if members and fault in ("corrupt_member", "wrong_size_member"):
            k = int(self.faults.rng_value("damage") * len(members))
            f, ln, name, data = members[k]
            if fault == "corrupt_member":
                data = b"CORRUPT!" * 10 + data[80:]
            else:
                data = data[: len(data) - 1000]
            members[k] = (f, ln, name, data)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for _, _, name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
        with self._lock:
            self.request_rows.append(len(rows))
            self.stats["rows"] += len(rows)
            self.stats["members"] += len(members)
        return arch, buf.getvalue()

    def count_status(self, status: int) -> None:
        with self._lock:
            self.status_counts[status] = self.status_counts.get(status, 0) + 1


class _Handler(StandinHandler):
    server_version = "das_cutout-standin/1.0"

    def on_reply(self, status: int) -> None:
        self.server.service.count_status(status)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.server.service.authorised(self.headers.get("Authorization")) is None:
            return self.send(401, b"authorization required\n", headers={"WWW-Authenticate": 'Basic realm="HSC"'})
        self.send(406, b"the single-cutout GET form is not served by this stand-in: POST a list\n")

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        service = self.server.service
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with service._lock:
            service.stats["requests"] += 1
        if self.path.split("?")[0] != CUTOUT_PATH:
            return self.send(404, b"not found\n")
        user = service.authorised(self.headers.get("Authorization"))
        if user is None:
            return self.send(401, b"authorization required\n", headers={"WWW-Authenticate": 'Basic realm="HSC"'})
        if not service.open_stream(user):
            return self.send(503, b"too many concurrent requests\n", headers={"Retry-After": "1"})
        try:
            self._serve(service, body)
        finally:
            service.close_stream(user)

    def _serve(self, service: CutoutService, body: bytes) -> None:
        fault = service.faults.draw()
        if fault == "http_502":
            return self.send(502, b"proxy error\n")
        if fault == "http_503":
            return self.send(503, b"service unavailable\n", headers={"Retry-After": "1"})
        if fault == "drop":
            return self.drop()
        if fault == "slow":
            time.sleep(service.faults.faults.slow_seconds)
        try:
            rows = parse_list_file(_list_part(self.headers.get("Content-Type", ""), body), service.max_rows)
        except ListFileError as e:
            return self.send(406, f"malformed request: {e}\n".encode())
        arch, tar = service.archive(rows, fault)
        headers = {"Content-Disposition": f'attachment; filename="{arch}.tar"'}
        if fault != "truncate":
            return self.send(200, tar, "application/x-tar", headers)
        cut = int(len(tar) * (0.1 + 0.8 * service.faults.rng_value("damage")))
        cut -= cut % 512 if service.faults.rng_value("damage") < 0.5 else 0  # at a block boundary, or mid-block
        honest_length = service.faults.rng_value("damage") < 0.5
        self.send(200, tar[:cut], "application/x-tar", headers, length=cut if honest_length else len(tar))
        self.wfile.flush()
        self.drop()


def _list_part(content_type: str, body: bytes) -> str:
    """The text of the multipart field `list`."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ListFileError("expected multipart/form-data")
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise ListFileError("malformed multipart body")
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "list":
            try:
                return part.get_payload(decode=True).decode("utf-8")
            except UnicodeDecodeError:
                raise ListFileError("the list is not UTF-8 text") from None
    raise ListFileError("no 'list' field")


class CutoutServer(LoopbackServer):
    """The das_cutout stand-in (see LoopbackServer)."""

    path = CUTOUT_PATH
    handler = _Handler

