"""The das_cutout stand-in for benchmarks: its cutouts rendered ahead of time into an on-disk
CutoutCache, served by `python -m galaxiesml.standins` in a process of its own (so serving does not
share a GIL with the work being measured).

The benchmark process and the server build the same sky from (galaxies, seed); the keys rendered
ahead are exactly those the client will ask for (positions as the list file writes them, the half
width as the server parses it, and the HSC-R2 / HSC-I2 fallbacks), so the server renders nothing
while a measurement runs (`rendered_while_serving` checks it from the cache's file count).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

from galaxiesml.hsc.credentials import Credentials
from galaxiesml.hsc.format import FALLBACK_FILTERS, FILTERS
from galaxiesml.schema import BANDS
from galaxiesml.standins.cutout_service import POOL_INDEX, CutoutCache, CutoutKey, parse_half_size, prerender

ROOT = Path(__file__).resolve().parents[1]
BENCH_CREDENTIALS = Credentials("bench", "bench-password-not-secret")


def request_keys(positions: Iterable[tuple[float, float]], half_width: float) -> list[CutoutKey]:
    """The keys of every cutout the client can ask for at these (ra, dec): the five bands, and
    the fallback filters of r and i. Positions and sizes go through the list file's formatting."""
    size = parse_half_size(f"{half_width:.4f}asec")
    filters = [*(FILTERS[b] for b in BANDS), *FALLBACK_FILTERS.values()]
    keys = []
    for ra, dec in positions:
        ra, dec = float(f"{ra:.8f}"), float(f"{dec:.8f}")
        keys.extend(CutoutKey(f, ra, dec, size, size, True, False, False) for f in filters)
    return keys


def prerender_cache(sky, keys: list[CutoutKey], cache_dir: Path, workers: int | None = None) -> int:
    """Render what the cache lacks (on every core); returns how many were rendered now."""
    cache = CutoutCache(cache_dir)
    t0 = time.perf_counter()
    n = prerender(sky, keys, cache, workers or os.cpu_count() or 1)
    if n:
        print(f"pre-rendered {n} cutouts in {time.perf_counter() - t0:.0f} s into {cache_dir}", flush=True)
    return n


def cache_files(cache_dir: Path) -> int:
    return sum(1 for _ in Path(cache_dir).glob("*.fits"))


class ServerProcess:
    """`python -m galaxiesml.standins` over make_sky(galaxies, seed), answering from `cache_dir` (a
    CutoutCache, or with `pool` a pool that build_pool made).
    Use as a context manager; `url` is the das_cutout endpoint."""

    def __init__(self, galaxies: int, seed: int, cache_dir: Path, log_path: Path,
                 credentials: Credentials = BENCH_CREDENTIALS, max_streams: int = 2, pool: bool = False):
        common = ["--galaxies", str(galaxies), "--seed", str(seed), "--max-streams", str(max_streams)]
        # pool: cache_dir is a pool (build_pool) that answers any position
        self.args = [sys.executable, "-m", "galaxiesml.standins", *common, "--pool" if pool else "--cache-dir", str(cache_dir)]
        self.env = dict(os.environ, HSC_SSP_CAS_USER=credentials.user, HSC_SSP_CAS_PASSWORD=credentials.password)
        self.log_path = Path(log_path)
        self.url = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self.url:
            m = re.search(r"das_cutout: (\S+)", self.log_path.read_text(errors="replace"))
            if m:
                self.url = m.group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"stand-in did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            else:
                time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- a pool of pre-rendered cutouts for skies too large to pre-render (served by PoolCache) --------
def build_pool(sky, positions: list[tuple[float, float]], half_width: float, pool_dir: Path, size: int) -> int:
    """Render every cutout the client can ask for at `positions` into `pool_dir` (a CutoutCache)
    and list in pool.json the first `size` that the g band covers; returns how many it lists."""
    prerender_cache(sky, request_keys(positions, half_width), Path(pool_dir))
    cache = CutoutCache(pool_dir)
    covered = [(ra, dec) for ra, dec in positions if cache.get(request_keys([(ra, dec)], half_width)[0])[1]][:size]
    (Path(pool_dir) / POOL_INDEX).write_text(json.dumps({"half_width": half_width, "positions": covered}))
    return len(covered)
