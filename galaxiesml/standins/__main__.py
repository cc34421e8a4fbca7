"""`python -m galaxiesml.standins`: start the das_cutout and catalog stand-ins on loopback over a
synthetic sky, print their URLs, and serve until interrupted.

The account is read like the real clients read it (HSC_SSP_CAS_USER / HSC_SSP_CAS_PASSWORD, or
SSP_PDR_USR / SSP_PDR_PWD); --user/--password override it for throwaway stand-in accounts."""
from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from galaxiesml.hsc.credentials import Credentials, HscAuthError
from galaxiesml.sky import make_sky, write_sky
from galaxiesml.standins.catalog_service import CatalogServer, CatalogService
from galaxiesml.standins.cutout_service import CutoutCache, CutoutServer, CutoutService, PoolCache
from galaxiesml.standins.faults import FAULT_KINDS, Faults


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m galaxiesml.standins", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="das_cutout port (0: any free port)")
    p.add_argument("--catalog-port", type=int, default=0, help="catalog API port (0: any free port)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--galaxies", type=int, default=2000, help="unique galaxies in the sky")
    p.add_argument("--patch-px", type=int, default=4000)
    p.add_argument("--psf", default="moffat", help="'moffat' or a FITS cube of 5 PSFs (g..y)")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of requests given a fault")
    p.add_argument("--fault-kinds", default=",".join(FAULT_KINDS), help="comma-separated kinds to spread it over")
    p.add_argument("--slow-seconds", type=float, default=1.0)
    p.add_argument("--max-streams", type=int, default=2)
    p.add_argument("--cache-dir", help="keep rendered cutouts here (shared between runs)")
    p.add_argument("--pool", help="answer every position from this pool of pre-rendered cutouts (PoolCache)")
    p.add_argument("--write-sky", help="also write truth.parquet and catalog.csv to this folder")
    p.add_argument("--user", help="stand-in account name (default: from the environment)")
    p.add_argument("--password", help="stand-in password (default: from the environment)")
    args = p.parse_args(argv)

    if args.user and args.password:
        creds = Credentials(args.user, args.password)
    else:
        try:
            creds = Credentials.from_env()
        except HscAuthError as e:
            p.error(str(e))
    faults = Faults.spread(args.fault_rate, args.seed, tuple(args.fault_kinds.split(",")), args.slow_seconds)
    sky, rows = make_sky(args.galaxies, args.seed, patch_px=args.patch_px, psf=args.psf)
    if args.write_sky:
        for what, path in write_sky(sky, rows, Path(args.write_sky)).items():
            print(f"{what} file: {path}", flush=True)
    cache = PoolCache(args.pool) if args.pool else CutoutCache(args.cache_dir)
    cutouts = CutoutServer(CutoutService(sky, creds, faults, cache, args.max_streams), args.host, args.port)
    catalog = CatalogServer(CatalogService(rows, creds, faults), args.host, args.catalog_port)
    with cutouts, catalog:
        print(f"das_cutout: {cutouts.url}", flush=True)
        print(f"catalog:    {catalog.url}", flush=True)
        print(f"sky: {sky.truth.num_rows} sources, {rows.num_rows} catalog rows, tract {sky.layout.tract}", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
