"""Command line: `python -m pipeline [run] --catalog ... --output ...` builds the dataset;
`python -m pipeline demo` runs it on a generated catalog; `generate-catalog` writes one."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from galaxiesml import synthetic_catalog
from galaxiesml.catalog import CatalogError, catalog_columns, check_columns
from pipeline.build import build
from galaxiesml.hsc.credentials import Credentials, HscAuthError
from pipeline.options import GalaxiesMLOptions, cutout_config, expand_preset, parse_fractions, sample_cuts
from transforms.read_catalog import open_catalog

USAGE = """usage: python -m pipeline [run] --catalog PATTERN --output DIR [Beam flags...]
       python -m pipeline demo [--galaxies N] [--seed S] [--output DIR] [options, Beam flags...]
       python -m pipeline generate-catalog --rows N --out FILE

`python -m pipeline run --help` lists every option, ours and Beam's."""


class UserError(Exception):
    """A mistake the user can fix; printed as one line without a traceback."""


def preflight(opts: GalaxiesMLOptions) -> list[str]:
    """Check what can be checked before a job starts; returns the matched catalog files."""
    if not opts.catalog:
        raise UserError("--catalog is required: a catalog file or glob (CSV, CSV.gz, FITS, Parquet)")
    if not opts.output:
        raise UserError("--output is required: the directory the dataset is written to")
    try:
        parse_fractions(opts.split_fractions)
        extra = sample_cuts(opts)
        if opts.cutout_source != "none":
            cutout_config(opts)
    except ValueError as exc:
        raise UserError(str(exc))
    if opts.cutout_source == "service":
        try:
            Credentials.from_env()
        except HscAuthError as exc:
            raise UserError(f"{exc} (or choose --cutout_source local or none)")
    if opts.cutout_source == "local" and not FileSystems.exists(opts.patch_root or "/nonexistent"):
        raise UserError(f"--patch_root {opts.patch_root!r} does not exist: give the folder holding deepCoadd-results/")
    matches = [m.path for r in FileSystems.match([opts.catalog]) for m in r.metadata_list]
    if not matches:
        raise UserError(f"no catalog file matches {opts.catalog!r}: check the path")
    for path in sorted(matches):
        try:
            with open_catalog(path) as stream:
                check_columns(catalog_columns(stream, path), path, extra.require_true)
        except CatalogError as exc:
            raise UserError(str(exc))
        except OSError as exc:
            raise UserError(f"{path}: cannot be read ({exc})")
    return sorted(matches)


def run_pipeline(opts: GalaxiesMLOptions):
    """Check the options, then run the job to completion; returns Beam's PipelineResult."""
    preflight(opts)
    p = beam.Pipeline(options=opts)
    build(p, opts)
    result = p.run()
    result.wait_until_finish()
    return result


def options(argv: list[str]) -> GalaxiesMLOptions:
    """Options from a command line, with its preset expanded."""
    try:
        argv, preset = expand_preset(argv)
    except ValueError as exc:
        raise UserError(str(exc))
    return GalaxiesMLOptions([*argv, "--preset", preset])


def run(argv: list[str]) -> dict:
    """Build the dataset; returns the summary written to summary.json."""
    opts = options(argv)
    run_pipeline(opts)
    with FileSystems.open(FileSystems.join(opts.output, "summary.json")) as f:
        summary = json.load(f)
    print_funnel(summary, opts.output)
    return summary


def print_funnel(summary: dict, output: str) -> None:
    f = summary["funnel"]
    lines = [f"rows read            {f['rows_read']:>10,}"]
    lines += [f"  rejected {k:<20}{v:>9,}" for k, v in f["rejected_by_reason"].items()]
    lines += [f"  duplicate {k:<19}{v:>9,}" for k, v in f["duplicates_by_key"].items()]
    lines += [f"kept                 {f['kept']:>10,}"]
    lines += [f"  {k:<27}{v:>9,}" for k, v in f["kept_by_split"].items()]
    print("\n".join(lines))
    if f["failed"]:
        for stage, reasons in f["failed_by_stage"].items():
            lines_failed = ", ".join(f"{r} {n:,}" for r, n in reasons.items())
            print(f"  failed in {stage}: {lines_failed}")
    print(f"outputs in {output}: galaxies/<split>/*.parquet, catalog/*.parquet, summary.json")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    command = argv.pop(0) if argv and not argv[0].startswith("-") else "run"
    try:
        if command == "run":
            run(argv)
        elif command == "demo":
            from pipeline.demo import demo

            demo(argv, run)
        elif command == "generate-catalog":
            return synthetic_catalog.main(argv)
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
