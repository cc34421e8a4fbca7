"""Client of the HSC PDR2 das_cutout bulk service (see docs/hsc-services.md).

Rows go up as a `#? rerun filter ra dec sw sh` list file (object id as the comment) in a multipart
POST with HTTP Basic auth, at most 990 rows (198 galaxies x 5 bands) per request. The tar reply is
read as it arrives, member by member, and matched back to rows by each member's `lineno` (first
data row = 2), never by member order. Every member is checked (a whole FITS file that astropy
opens, of the asked filter and no larger than asked); 502/503, dropped connections, timeouts,
truncated tars (the whole members before the break are kept) and bad members are retried with
exponential backoff, only for the rows still owed. A row absent from a complete reply has no
coverage. Missing r or i cutouts are asked again in HSC-R2 / HSC-I2. 401 raises HscAuthError and
406 HscRequestError; neither message, nor any log line, nor a repr carries the password.
"""
from __future__ import annotations

import io
import logging
import random
import tarfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import requests
from astropy.io import fits

from galaxiesml.hsc.credentials import Credentials, HscAuthError, HscError
from galaxiesml.hsc.format import (
    BAND_OF_FILTER,
    FALLBACK_FILTERS,
    FILTERS,
    HALF_WIDTH_127,
    PDR2_CUTOUT_URL,
    RERUN,
    ROWS_PER_REQUEST,
    SIZE_SLACK_PX,
    nominal_pixels,
    parse_member_name,
)
from galaxiesml.schema import BANDS

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({500, 502, 503, 504})
_TAR_END = b"\0" * 1024
_CHUNK = 64 * 1024  # bytes read from the socket at a time

Status = Literal["ok", "missing", "failed"]


class HscRequestError(HscError):
    """The service refused the request as malformed (HTTP 406) or with another client error."""


class _Retry(Exception):
    """A transient failure of one request: try again after a backoff (at least `retry_after` s)."""

    def __init__(self, reason: str, retry_after: float = 0.0):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class CutoutRow:
    """One cutout to ask for: a position, a filter name and half sizes in arcsec."""

    object_id: int
    ra: float
    dec: float
    filter: str
    half_width: float = HALF_WIDTH_127
    half_height: float | None = None


@dataclass(frozen=True)
class RowResult:
    """What came back for one row: `ok` with the FITS bytes, `missing` (no coverage), or `failed`
    (retries exhausted; `error` says why)."""

    row: CutoutRow
    status: Status
    data: bytes | None = None
    error: str | None = None


@dataclass(frozen=True)
class Target:
    """A galaxy to fetch in every band."""

    object_id: int
    ra: float
    dec: float


@dataclass
class GalaxyCutouts:
    """The cutouts of one galaxy: FITS bytes per band, the filter each came from, the bands
    without coverage and the bands that failed (band -> error)."""

    object_id: int
    ra: float
    dec: float
    cutouts: dict[str, bytes] = field(default_factory=dict)
    filters: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.failed


def list_file(rows: Sequence[CutoutRow], rerun: str = RERUN, planes: tuple[str, ...] = ("image",)) -> str:
    """The list file for `rows`: `#?` header, then one row per line with the object id after `#`.
    The image/mask/variance columns are added only when more than the image is wanted."""
    extra = planes != ("image",)
    header = "#? rerun filter ra dec sw sh" + (" image mask variance" if extra else "")
    flags = " " + " ".join("true" if p in planes else "false" for p in ("image", "mask", "variance")) if extra else ""
    lines = [header]
    for r in rows:
        sh = r.half_width if r.half_height is None else r.half_height
        lines.append(
            f"{rerun} {r.filter} {r.ra:.8f} {r.dec:.8f} {r.half_width:.4f}asec {sh:.4f}asec{flags} # {r.object_id}"
        )
    return "\n".join(lines) + "\n"


def check_member(data: bytes, row: CutoutRow, planes: tuple[str, ...]) -> str | None:
    """Why a member cannot be the cutout of `row` (None when it can): it must be whole FITS
    blocks, open with astropy, carry the asked planes as 2-d arrays no larger than asked, give or
    take SIZE_SLACK_PX (the service's rounding is not documented; where the galaxy lies on it is
    for the decoder to read from its WCS)."""
    if len(data) == 0 or len(data) % 2880:
        return f"member of {len(data)} bytes is not whole FITS blocks"
    sh = row.half_width if row.half_height is None else row.half_height
    max_w = nominal_pixels(row.half_width) + SIZE_SLACK_PX
    max_h = nominal_pixels(sh) + SIZE_SLACK_PX
    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            if len(hdul) != 1 + len(planes):
                return f"{len(hdul)} HDUs for {len(planes)} planes"
            for hdu in hdul[1:]:
                shape = np.shape(hdu.data)
                if len(shape) != 2 or shape[0] > max_h or shape[1] > max_w or 0 in shape:
                    return f"bad plane shape {shape}"
    except Exception as e:  # astropy raises many kinds for a damaged file
        return f"unreadable FITS: {type(e).__name__}"
    return None


class CutoutClient:
    """Fetches cutouts from das_cutout (or a stand-in at `url`) with one requests.Session.

    `timeout` is (connect, read) seconds per request; a failed request is retried up to
    `max_retries` times, waiting backoff_s * 2**k (capped at max_backoff_s, with jitter, or the
    server's Retry-After when larger). `planes` picks the HDUs (image, mask, variance)."""

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        url: str = PDR2_CUTOUT_URL,
        rerun: str = RERUN,
        planes: tuple[str, ...] = ("image",),
        rows_per_request: int = ROWS_PER_REQUEST,
        timeout: tuple[float, float] = (10.0, 600.0),
        max_retries: int = 6,
        backoff_s: float = 2.0,
        max_backoff_s: float = 120.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not 1 <= rows_per_request <= 1000:
            raise ValueError("rows_per_request must be in 1..1000")
        if not planes or set(planes) - {"image", "mask", "variance"}:
            raise ValueError("planes must be some of image, mask, variance")
        self._credentials = credentials or Credentials.from_env()
        self.url = url
        self.rerun = rerun
        self.planes = tuple(p for p in ("image", "mask", "variance") if p in planes)
        self.rows_per_request = rows_per_request
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.session = session or requests.Session()
        self.session.auth = (self._credentials.user, self._credentials.password)
        self._sleep = sleep
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "rows": 0}

    def __repr__(self) -> str:
        return f"CutoutClient(url={self.url!r}, user={self._credentials.user!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "CutoutClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ---------------------------------------------------------------------------
    def _post(self, rows: Sequence[CutoutRow]) -> requests.Response:
        """POST one list; the 200 reply with its body not yet read (the caller closes it), or
        _Retry for a transient failure."""
        self.stats["requests"] += 1
        files = {"list": ("list.txt", list_file(rows, self.rerun, self.planes).encode(), "text/plain")}
        try:
            reply = self.session.post(self.url, files=files, timeout=self.timeout, stream=True)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            raise _Retry(f"connection failed: {type(e).__name__}") from None
        if reply.status_code == 200:
            return reply
        with reply:
            if reply.status_code == 401:
                raise HscAuthError(f"das_cutout refused the account {self._credentials.user!r} (HTTP 401)")
            if reply.status_code in RETRY_STATUSES:
                try:
                    retry_after = float(reply.headers.get("Retry-After", "0"))
                except ValueError:
                    retry_after = 0.0
                raise _Retry(f"HTTP {reply.status_code}", retry_after)
            try:
                text = reply.text.strip()[:300]
            except requests.RequestException as e:
                raise _Retry(f"connection failed: {type(e).__name__}") from None
            if reply.status_code == 406:
                raise HscRequestError(f"das_cutout rejected the request (HTTP 406): {text}")
            raise HscRequestError(f"das_cutout answered HTTP {reply.status_code}: {text}")

    def _backoff(self, attempt: int, reason: str, retry_after: float = 0.0) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
        delay = max(delay, min(self.max_backoff_s, retry_after))
        log.info("das_cutout: %s; retrying in %.2f s", reason, delay)
        self.stats["retries"] += 1
        self._sleep(delay)

    def _read_tar(
        self, chunks: Iterable[bytes], rows: Sequence[CutoutRow]
    ) -> tuple[dict[int, bytes], dict[int, str], str | None]:
        """({row index: member bytes}, {row index: why a member was rejected}, why the archive is
        incomplete or None). The body is read as it arrives, one member at a time, so a reply is
        never held twice (as the body and as its members). Members are mapped by lineno; a whole
        archive ends with zero blocks."""
        good: dict[int, bytes] = {}
        bad: dict[int, str] = {}
        body = _Body(chunks)
        try:
            with tarfile.open(fileobj=body, mode="r|") as tar:  # type: ignore[call-overload]
                for info in tar:
                    name = parse_member_name(info.name)
                    if name is None or not info.isfile():
                        continue
                    index = name.lineno - 2
                    if not 0 <= index < len(rows) or name.filter != rows[index].filter:
                        log.warning("das_cutout: member %s matches no row; ignored", info.name)
                        continue
                    data = tar.extractfile(info).read()  # type: ignore[union-attr]
                    problem = check_member(data, rows[index], self.planes)
                    if problem is None:
                        good[index] = data
                    else:
                        bad[index] = problem
                end = tar.offset
            if body.bytes_at(end, len(_TAR_END)) != _TAR_END:
                return good, bad, "incomplete tar archive"
        except (tarfile.TarError, EOFError, OSError, requests.RequestException) as e:
            return good, bad, f"incomplete tar archive ({type(e).__name__})"
        return good, bad, None

    # -- many rows -----------------------------------------------------------------------------
    def fetch_batch(self, rows: Sequence[CutoutRow]) -> list[RowResult]:
        """Results for at most rows_per_request rows, in row order, retrying what is still owed."""
        if len(rows) > self.rows_per_request:
            raise ValueError(f"{len(rows)} rows > rows_per_request={self.rows_per_request}")
        done: dict[int, RowResult] = {}
        owed = list(range(len(rows)))
        reason, retry_after = "", 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._backoff(attempt - 1, reason, retry_after)
            batch = [rows[i] for i in owed]
            try:
                reply = self._post(batch)
            except _Retry as e:
                reason, retry_after = str(e), e.retry_after
                continue
            retry_after = 0.0
            with reply:
                good, bad, incomplete = self._read_tar(reply.iter_content(_CHUNK), batch)
            for j, data in good.items():
                done[owed[j]] = RowResult(rows[owed[j]], "ok", data)
            if incomplete is None:
                for j in range(len(batch)):
                    if j not in good and j not in bad:
                        done[owed[j]] = RowResult(rows[owed[j]], "missing")
            owed = [i for i in owed if i not in done]
            if not owed:
                break
            reason = incomplete or f"{len(bad)} bad member(s)"
            if bad:
                reason += f" ({next(iter(bad.values()))})"
        for i in owed:
            done[i] = RowResult(rows[i], "failed", error=f"gave up after {self.max_retries} retries: {reason}")
        self.stats["rows"] += len(rows)
        return [done[i] for i in range(len(rows))]

    def fetch_rows(self, rows: Sequence[CutoutRow]) -> list[RowResult]:
        """Results for any number of rows, in order, `rows_per_request` per request."""
        out: list[RowResult] = []
        for start in range(0, len(rows), self.rows_per_request):
            out.extend(self.fetch_batch(rows[start : start + self.rows_per_request]))
        return out

    def fetch_galaxies(
        self,
        targets: Iterable[Target],
        bands: Sequence[str] = BANDS,
        half_width: float = HALF_WIDTH_127,
        fallback: bool = True,
    ) -> Iterator[GalaxyCutouts]:
        """Every band of every target, whole galaxies per request (198 with 5 bands); with
        `fallback`, a missing r or i cutout is asked again in HSC-R2 / HSC-I2."""
        per_request = max(1, self.rows_per_request // len(bands))
        chunk: list[Target] = []
        for target in targets:
            chunk.append(target)
            if len(chunk) == per_request:
                yield from self._fetch_chunk(chunk, bands, half_width, fallback)
                chunk = []
        if chunk:
            yield from self._fetch_chunk(chunk, bands, half_width, fallback)

    def _fetch_chunk(
        self, targets: list[Target], bands: Sequence[str], half_width: float, fallback: bool
    ) -> list[GalaxyCutouts]:
        rows = [CutoutRow(t.object_id, t.ra, t.dec, FILTERS[b], half_width) for t in targets for b in bands]
        results = self.fetch_batch(rows)
        if fallback:
            retry = [k for k, r in enumerate(results) if r.status == "missing" and r.row.filter in FALLBACK_FILTERS]
            for start in range(0, len(retry), self.rows_per_request):
                part = retry[start : start + self.rows_per_request]
                alt = [_with_filter(results[k].row, FALLBACK_FILTERS[results[k].row.filter]) for k in part]
                for k, res in zip(part, self.fetch_batch(alt)):
                    if res.status != "missing":
                        results[k] = res
        out = []
        for t, start in zip(targets, range(0, len(rows), len(bands))):
            g = GalaxyCutouts(t.object_id, t.ra, t.dec)
            for res in results[start : start + len(bands)]:
                band = BAND_OF_FILTER[res.row.filter]
                if res.status == "ok":
                    g.cutouts[band] = res.data  # type: ignore[assignment]
                    g.filters[band] = res.row.filter
                elif res.status == "missing":
                    g.missing.append(band)
                else:
                    g.failed[band] = res.error or "failed"
            out.append(g)
        return out


class _Body:
    """A reply body as the file that tarfile's stream mode reads, taken from the socket as it
    arrives. It keeps the last `keep` bytes it handed out, so that the blocks where the archive
    stopped (read ahead by tarfile) can still be checked for the end-of-archive marker."""

    def __init__(self, chunks: Iterable[bytes], keep: int = 4 * tarfile.RECORDSIZE):
        self._chunks = iter(chunks)
        self._chunk = memoryview(b"")
        self._recent: deque[bytes] = deque()
        self._kept = 0
        self._keep = keep
        self.pos = 0  # bytes handed out so far

    def read(self, n: int = -1) -> bytes:
        while not self._chunk:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._chunk = memoryview(chunk)
        out = bytes(self._chunk if n < 0 else self._chunk[:n])
        self._chunk = self._chunk[len(out) :]
        self.pos += len(out)
        self._recent.append(out)
        self._kept += len(out)
        while self._kept - len(self._recent[0]) >= self._keep:
            self._kept -= len(self._recent.popleft())
        return out

    def bytes_at(self, offset: int, n: int) -> bytes:
        """The `n` bytes from `offset` (fewer where the body ends first), reading on as needed."""
        while self.pos < offset + n and self.read(offset + n - self.pos):
            pass
        start = offset - (self.pos - self._kept)
        if start < 0:
            raise ValueError(f"offset {offset} is no longer kept")
        return b"".join(self._recent)[start : start + n]


def _with_filter(row: CutoutRow, filter_name: str) -> CutoutRow:
    return CutoutRow(row.object_id, row.ra, row.dec, filter_name, row.half_width, row.half_height)
