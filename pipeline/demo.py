"""`python -m pipeline demo`: the whole build offline, on a synthetic HSC sky served by the local
stand-in of the cutout service, through the real HTTP client, on DirectRunner."""
from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from galaxiesml.sky import make_sky, write_sky
from galaxiesml.hsc.credentials import Credentials
from galaxiesml.standins.cutout_service import CutoutCache, CutoutServer, CutoutService
from galaxiesml.standins.faults import Faults
from pipeline.options import UserError, check_flags

DEMO_USER = "demo"


def demo_parser() -> argparse.ArgumentParser:
    """The demo's own flags (it takes every `run` option and Beam flag besides)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline demo",
        description=__doc__.replace("\n", " "),
        epilog="Every `run` option (`python -m pipeline run --help`) and Beam flag (`python -m pipeline run "
        "--help-beam`) works too, e.g. --no_sersic or --direct_running_mode=multi_processing.",
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("--galaxies", type=int, default=1000, help="unique galaxies in the synthetic sky (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic sky (default 0)")
    parser.add_argument("--output", default="out/demo", help="output directory (default out/demo)")
    parser.add_argument(
        "--fault_rate", type=float, default=0.0, help="share of cutout requests the stand-in fails or corrupts"
    )
    return parser


def demo(argv: list[str], run) -> dict:
    """Make the sky, serve it on loopback, build from its catalog with `run(argv) -> summary`."""
    parser = demo_parser()
    if "-h" in argv or "--help" in argv:
        print(parser.format_help())
        return {}
    try:
        check_flags(argv, parents=[demo_parser()])  # a parser of its own: argparse's parents share actions
    except ValueError as exc:
        raise UserError(str(exc))
    args, pipeline_args = parser.parse_known_args(argv)
    out = Path(args.output)
    # patches of 1,000 px (2.8 arcmin): enough of them that coverage gaps hit some galaxies, not all
    sky, rows = make_sky(args.galaxies, args.seed, patch_px=1000)
    paths = write_sky(sky, rows, out / "input")
    print(f"demo: a synthetic sky of {args.galaxies:,} galaxies, catalog of {rows.num_rows:,} rows in {paths['catalog']}")
    # a fresh account for the stand-in, handed to the job through the environment only
    credentials = Credentials(DEMO_USER, secrets.token_urlsafe(12))
    faults = Faults.spread(args.fault_rate, seed=args.seed, slow_seconds=0.2)
    service = CutoutService(sky, credentials, faults, cache=CutoutCache(out / "input" / "rendered"))
    saved = {k: os.environ.get(k) for k in ("HSC_SSP_CAS_USER", "HSC_SSP_CAS_PASSWORD")}
    os.environ["HSC_SSP_CAS_USER"], os.environ["HSC_SSP_CAS_PASSWORD"] = credentials.user, credentials.password
    try:
        with CutoutServer(service) as server:
            print(f"demo: das_cutout stand-in at {server.url}" + (f" failing {args.fault_rate:.0%} of requests" if args.fault_rate else ""))
            return run(
                [
                    "--catalog", str(paths["catalog"]),
                    "--output", str(out),
                    "--cutout_source", "service",
                    "--hsc_url", server.url,
                    "--synthetic_sky", f"python -m pipeline demo --galaxies {args.galaxies} --seed {args.seed}",
                    *pipeline_args,
                ]
            )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
