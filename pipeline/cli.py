"""Command line: `python -m pipeline [run] --catalog ... --output ...` builds the dataset;
`python -m pipeline demo` runs it offline on a synthetic sky; `generate-catalog` writes a catalog.

Mistakes a user can fix are one line each, saying what to do (`--verbose` adds the traceback)."""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
import zlib

import apache_beam as beam
import requests
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo, FnApiRunner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

from galaxiesml import synthetic_catalog
from galaxiesml.catalog import CatalogError, catalog_columns, check_columns
from galaxiesml.hsc.credentials import Credentials, HscAuthError
from galaxiesml.memory import limit_malloc_arenas_in_workers
from galaxiesml.storage import created_atomically
from pipeline.build import build, run_info
from pipeline.options import GalaxiesMLOptions, cutout_config, expand_preset, parse_fractions, sample_cuts
from pipeline.progress import Progress
from transforms.read_catalog import open_catalog

BUILD_FILE = "build.json"
#: What makes two builds the same build (a rerun into the same output resumes it).
IDENTITY = ("catalog", "preset", "split_seed", "split_fractions", "extra_cuts", "mini_size", "mini_seed", "cutout_source", "cutouts", "psf", "sersic_fit")

USAGE = """usage: python -m pipeline [run] --catalog PATTERN --output DIR [Beam flags...]
       python -m pipeline demo [--galaxies N] [--seed S] [--output DIR] [options, Beam flags...]
       python -m pipeline generate-catalog --rows N --out FILE
       python -m pipeline report OUTPUT_DIR   (the data card of a built output)

`python -m pipeline run --help` lists every option, ours and Beam's."""


class UserError(Exception):
    """A mistake the user can fix; printed as one line without a traceback."""


def _check_gcs(*paths: str) -> None:
    if any(p.startswith("gs://") for p in paths):
        try:
            import apache_beam.io.gcp.gcsfilesystem  # noqa: F401
            import google.cloud.storage  # noqa: F401
        except ImportError:
            raise UserError("gs:// paths need the GCP extra: pip install -e '.[gcp]'")


def _check_service(url: str) -> None:
    try:
        requests.get(url, timeout=10)
    except requests.RequestException as exc:
        raise UserError(
            f"cannot reach the HSC cutout service at {url} ({type(exc).__name__}): check the network, "
            "or --hsc_url, or use --cutout_source local or none"
        )


def _check_output(opts: GalaxiesMLOptions) -> None:
    """Refuse an output directory that holds another build; record this build's identity there."""
    info = json.loads(json.dumps(run_info(opts)))  # as it reads back (tuples become lists)
    path = FileSystems.join(opts.output, BUILD_FILE)
    if FileSystems.exists(path) and not opts.overwrite:
        with FileSystems.open(path) as f:
            other = json.load(f)
        differs = [k for k in IDENTITY if other.get(k) != info.get(k)]
        if differs:
            raise UserError(
                f"{opts.output} holds another build (it differs in {', '.join(differs)}): choose another "
                "--output, or pass --overwrite to replace it"
            )
    with created_atomically(path) as f:
        f.write(json.dumps(info, indent=2, sort_keys=True).encode())


def preflight(opts: GalaxiesMLOptions) -> list[str]:
    """Check what can be checked before a job starts; returns the matched catalog files."""
    if not opts.catalog:
        raise UserError("--catalog is required: a catalog file or glob (CSV, CSV.gz, FITS, Parquet)")
    if not opts.output:
        raise UserError("--output is required: the directory the dataset is written to")
    _check_gcs(opts.catalog, opts.output, opts.cutout_cache or "")
    try:
        parse_fractions(opts.split_fractions)
        extra = sample_cuts(opts)
        if opts.cutout_source != "none":
            cutout_config(opts)
    except ValueError as exc:
        raise UserError(str(exc))
    matches = [m.path for r in FileSystems.match([opts.catalog]) for m in r.metadata_list]
    if not matches:
        raise UserError(f"no catalog file matches {opts.catalog!r}: check the path")
    for path in sorted(matches):
        try:
            with open_catalog(path) as stream:
                check_columns(catalog_columns(stream, path), path, extra.require_true)
        except CatalogError as exc:
            raise UserError(str(exc))
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(f"{path}: cannot be read ({exc})")
    if opts.cutout_source == "service":
        try:
            Credentials.from_env()
        except HscAuthError as exc:
            raise UserError(f"{exc} (or choose --cutout_source local or none)")
        _check_service(opts.hsc_url)
    if opts.cutout_source == "local" and not FileSystems.exists(opts.patch_root or "/nonexistent"):
        raise UserError(f"--patch_root {opts.patch_root!r} does not exist: give the folder holding deepCoadd-results/")
    _check_output(opts)
    return sorted(matches)


def local_runner(opts: GalaxiesMLOptions) -> FnApiRunner | None:
    """The FnApiRunner where the DirectRunner is asked for (Beam's default), None for other runners.
    Beam 2.77's DirectRunner first downloads and runs the Prism runner, and falls back to the
    FnApiRunner (the one that runs --direct_running_mode and --direct_num_workers, and that our tests
    and benchmarks measure) only where that fails: the same command would run on different runners
    online and offline. The FnApiRunner gets the pipeline options as the DirectRunner gives them."""
    name = (opts.view_as(StandardOptions).runner or "DirectRunner").lower()
    if name not in ("direct", "directrunner"):
        return None
    options = JobServiceHandle.encode_pipeline_options(opts.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=options)
    return FnApiRunner(provision_info=ExtendedProvisionInfo(info))


def run_pipeline(opts: GalaxiesMLOptions):
    """Check the options, then run the job to completion (worker processes it starts get few malloc
    arenas; the DirectRunner is run as local_runner says); returns Beam's PipelineResult."""
    preflight(opts)
    limit_malloc_arenas_in_workers()
    p = beam.Pipeline(runner=local_runner(opts), options=opts)
    build(p, opts)
    with Progress(opts.progress_every) if opts.progress_every > 0 else contextlib.nullcontext():
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
    return finish_build(opts)


def finish_build(opts: GalaxiesMLOptions) -> dict:
    """After the job, in the launcher: the funnel printed and the data card written; returns the
    summary written to summary.json."""
    with FileSystems.open(FileSystems.join(opts.output, "summary.json")) as f:
        summary = json.load(f)
    print_funnel(summary, opts.output)
    if "://" in opts.output:
        print("data card: make it from a local copy with `python -m pipeline report DIR`")
    else:
        from galaxiesml.datacard import write_datacard

        card = write_datacard(opts.output)
        print(f"data card: {card['html']}")
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
    verbose = "--verbose" in argv
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    logging.getLogger("apache_beam").setLevel(logging.INFO if verbose else logging.ERROR)
    command = argv.pop(0) if argv and not argv[0].startswith("-") else "run"
    try:
        if command == "run":
            run(argv)
        elif command == "demo":
            from pipeline.demo import demo

            demo(argv, run)
        elif command == "generate-catalog":
            return synthetic_catalog.main(argv)
        elif command == "report":
            from galaxiesml.datacard import main as datacard_main

            return datacard_main(argv)
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a failed job: one line, the traceback on request
        if verbose:
            traceback.print_exc()
        print(f"error: the build failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
              + ("" if verbose else " (--verbose shows the traceback)"), file=sys.stderr)
        return 1
    return 0
