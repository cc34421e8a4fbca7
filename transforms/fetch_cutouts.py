"""Stage 6 (paper section 3.3): each kept galaxy's 5-band cutout, fetched, decoded and stacked.

Kept rows are cut into request batches of at most 198 galaxies (5 bands x 198 < 990 rows), which a
Reshuffle spreads over workers. Each worker fetches with a small thread pool (its HTTP clients made
in setup() and closed in teardown()) under a per-process cap on concurrent streams, since the HSC
service answers 503 beyond 2 per account. A cache on any Beam filesystem keeps every fetched
galaxy, so a rerun, or a run after a crash, fetches nothing it already has.

Memory stays that of max_streams + 1 requests whatever the run's size: the pool fetches the next
max_streams batches while one batch's records go downstream, rows become dicts one request at a
time, a reply's tar is read member by member as it arrives, a galaxy's FITS bytes are dropped once
decoded, its record once written, and what a batch freed is handed back to the OS after it
(galaxiesml.memory).

Outputs: one record per galaxy ({"row": catalog columns, "image", "flags", ...}) and "failed"
records naming the galaxy's row, the stage and the reason.
"""
from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from galaxiesml.cutouts import (
    CutoutError,
    GalaxyImage,
    cache_key,
    cache_name,
    cacheable,
    galaxy_image,
    pack_cutouts,
    unpack_cutouts,
)
from galaxiesml.hsc.cutout_client import CutoutClient, GalaxyCutouts, Target
from galaxiesml.hsc.format import GALAXIES_PER_REQUEST, PAPER_HALF_WIDTH, PDR2_CUTOUT_URL
from galaxiesml.hsc.credentials import Credentials
from galaxiesml.memory import release_free_memory
from galaxiesml.schema import BANDS
from galaxiesml.storage import created_atomically
from transforms import arrow  # noqa: F401  (request batches travel as Arrow tables)
from transforms.metrics import increment

FAILED = "failed"

_streams_lock = threading.Lock()
_streams: dict[int, threading.BoundedSemaphore] = {}


def _stream_cap(n: int) -> threading.BoundedSemaphore:
    """One semaphore per process and cap, shared by every DoFn instance in the process."""
    with _streams_lock:
        return _streams.setdefault(n, threading.BoundedSemaphore(n))


@dataclass(frozen=True)
class CutoutConfig:
    """Where cutouts come from and how they are kept."""

    source: str = "service"  # "service" (das_cutout or a stand-in at url) or "coadd" (a coadd mirror)
    url: str = PDR2_CUTOUT_URL
    coadd_root: str = ""  # the mirror of a rerun (holding deepCoadd-results/), any Beam filesystem
    half_width: float = PAPER_HALF_WIDTH
    planes: tuple[str, ...] = ("image",)
    cache: str = ""  # "" for no cache
    max_streams: int = 2
    galaxies_per_request: int = GALAXIES_PER_REQUEST
    max_retries: int = 6
    backoff_s: float = 2.0


def failed_record(row: dict, stage: str, reason: str, detail: str) -> dict:
    """A galaxy that could not be completed: its catalog identity, the stage and why."""
    return {
        "source": row["source"],
        "line": row["line"],
        "object_id": row["object_id"],
        "specz_name": row["specz_name"],
        "stage": stage,
        "reason": reason,
        "detail": detail,
    }


def galaxy_record(row: dict, img: GalaxyImage) -> dict:
    """A galaxy's record for the stages after the cutouts: its catalog row, image cube, flags, the
    filters its bands came from, and the HSC mask and variance planes where they were kept."""
    record = {"row": row, "image": img.image, "flags": img.flags, "filters": img.filters}
    if img.hsc_mask is not None:
        record["hsc_mask"] = img.hsc_mask
    if img.variance is not None:
        record["variance"] = img.variance
    return record


def request_batches(table: pa.Table, size: int = GALAXIES_PER_REQUEST) -> Iterator[pa.Table]:
    """Kept rows as tables of at most `size` rows, one cutout request each, as few as that allows
    and of near-equal length (no small leftover request: workers get even shares). They stay
    Arrow tables until the worker that fetches them: made into Python dicts where the catalog was
    read, 20,000 rows left that worker ~60 MB larger for the rest of the run."""
    n = table.num_rows
    count = -(-n // size)
    for k in range(count):
        start = k * n // count
        yield table.slice(start, (k + 1) * n // count - start)


class _FetchBatch(beam.DoFn):
    def __init__(self, config: CutoutConfig):
        self.config = config

    def setup(self):
        self._local = threading.local()
        self._clients: list[CutoutClient] = []
        self._clients_lock = threading.Lock()
        self._credentials = Credentials.from_env() if self.config.source == "service" else None
        self._pool = concurrent.futures.ThreadPoolExecutor(self.config.max_streams, thread_name_prefix="cutouts")
        self._cap = _stream_cap(self.config.max_streams)
        self._cache_dir = (
            FileSystems.join(self.config.cache, cache_key(self.config.half_width, self.config.planes))
            if self.config.cache
            else ""
        )

    def teardown(self):
        self._pool.shutdown(wait=True)
        for client in self._clients:
            client.close()

    def start_bundle(self):
        self._pending: list[concurrent.futures.Future] = []

    def _client(self) -> CutoutClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = CutoutClient(
                self._credentials,
                url=self.config.url,
                planes=self.config.planes,
                rows_per_request=self.config.galaxies_per_request * len(BANDS),
                max_retries=self.config.max_retries,
                backoff_s=self.config.backoff_s,
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _fetch(self, targets: list[Target]) -> tuple[list[GalaxyCutouts], int]:
        client = self._client()
        before = client.stats["retries"]
        with self._cap:
            got = list(client.fetch_galaxies(targets, half_width=self.config.half_width))
        return got, client.stats["retries"] - before

    def _work(self, table: pa.Table) -> tuple[list, dict]:
        """Cache, fetch, decode one request batch (in a pool thread); returns the outputs (tagged
        where failed) and the counts, which the bundle's thread adds to the Beam counters (the
        metrics of other threads belong to no step)."""
        rows = table.to_pylist()
        targets = {r["object_id"]: Target(r["object_id"], r["ra"], r["dec"]) for r in rows}
        cutouts: dict[int, GalaxyCutouts] = {}
        if self._cache_dir:
            for oid, target in targets.items():
                path = FileSystems.join(self._cache_dir, cache_name(oid))
                if FileSystems.exists(path):
                    with FileSystems.open(path) as f:
                        try:
                            cutouts[oid] = unpack_cutouts(f.read(), target)
                        except CutoutError:
                            pass  # a damaged entry is fetched again
        to_fetch = [t for oid, t in targets.items() if oid not in cutouts]
        fetched, retries = self._fetch(to_fetch) if to_fetch else ([], 0)
        for g in fetched:
            cutouts[g.object_id] = g
            if self._cache_dir and cacheable(g):
                with created_atomically(FileSystems.join(self._cache_dir, cache_name(g.object_id))) as f:
                    f.write(pack_cutouts(g))
        del fetched
        counts = {"cutouts.cached": len(rows) - len(to_fetch), "cutouts.fetched": len(to_fetch), "cutouts.retried": retries}
        images = {}
        for oid in list(cutouts):  # each galaxy's FITS bytes dropped once decoded: one copy of the batch held, not two
            try:
                images[oid] = galaxy_image(cutouts.pop(oid))
            except CutoutError as exc:
                images[oid] = exc
        out = []
        for row in rows:
            img = images[row["object_id"]]
            if isinstance(img, CutoutError):
                counts[f"failed.cutout.{img.reason}"] = counts.get(f"failed.cutout.{img.reason}", 0) + 1
                out.append(beam.pvalue.TaggedOutput(FAILED, failed_record(row, "cutout", img.reason, img.detail)))
                continue
            out.append(galaxy_record(row, img))
        return out, counts

    @staticmethod
    def _outputs(future: concurrent.futures.Future) -> Iterator:
        """A finished batch's outputs, each let go once yielded (downstream writes and drops it),
        so a batch's images leave memory as they are written rather than all at its end."""
        out, counts = future.result()
        increment(counts)
        out.reverse()
        while out:
            yield out.pop()
        release_free_memory()

    def process(self, rows: pa.Table):
        self._pending.append(self._pool.submit(self._work, rows))
        # While one batch's records go downstream, the pool works on the next max_streams and no
        # more: a worker holds at most max_streams + 1 batches of images however long its bundle.
        while len(self._pending) > self.config.max_streams:
            yield from self._outputs(self._pending.pop(0))
        done = [f for f in self._pending if f.done()]
        for future in done:
            self._pending.remove(future)
            yield from self._outputs(future)

    def finish_bundle(self):
        for future in concurrent.futures.as_completed(self._pending):
            for out in self._outputs(future):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
                else:
                    yield GlobalWindows.windowed_value(out)
        self._pending = []


class FetchCutouts(beam.PTransform):
    """Kept rows (tables) -> {"galaxies": one record per galaxy with its image, "failed"}."""

    def __init__(self, config: CutoutConfig):
        super().__init__()
        if not 1 <= config.galaxies_per_request <= GALAXIES_PER_REQUEST:
            raise ValueError(f"galaxies per request must be 1..{GALAXIES_PER_REQUEST} (5 bands x 198 < 990 rows)")
        self.config = config

    def expand(self, kept):
        return (
            kept
            | "Request batches" >> beam.FlatMap(request_batches, self.config.galaxies_per_request).with_output_types(pa.Table)
            | "Spread requests" >> beam.Reshuffle()
            | "Fetch and stack" >> beam.ParDo(_FetchBatch(self.config)).with_outputs(FAILED, main="galaxies")
        )
