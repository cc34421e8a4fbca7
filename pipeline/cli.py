"""Command line: `python -m pipeline [run] --catalog ... --output ...` builds the dataset;
`python -m pipeline demo` runs it offline on a synthetic sky; `generate-catalog` writes a catalog.

Mistakes a user can fix are one line each, saying what to do (`--verbose` adds the traceback)."""
from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import re
import sys
import sysconfig
import traceback
import zlib
from pathlib import Path

import apache_beam as beam
import requests
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions, WorkerOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo, FnApiRunner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

from galaxiesml import synthetic_catalog
from galaxiesml.catalog import UNREADABLE_FILE, CatalogError, catalog_columns, check_columns
from galaxiesml.hsc.credentials import Credentials, HscAuthError
from galaxiesml.memory import limit_malloc_arenas_in_workers
from galaxiesml.storage import created_atomically
from pipeline.build import build, run_info
from pipeline.options import (
    GalaxiesMLOptions,
    UserError,
    check_flags,
    cutout_config,
    expand_preset,
    options_parser,
    parse_fractions,
    sample_cuts,
)
from pipeline.progress import Progress, shared_progress, worker_output_discarded
from pipeline.runner_fixes import no_timed_flush_of_worker_inputs
from transforms.read_catalog import catalog_files, open_catalog

BUILD_FILE = "build.json"
#: What makes two builds the same build (a rerun into the same output resumes it): what shapes the
#: data, never where it was fetched from on this run (a stand-in's loopback port, the cache, streams).
IDENTITY = ("catalog", "synthetic_sky", "preset", "split_seed", "split_fractions", "extra_cuts", "mini_size", "mini_seed",
            "cutout_source", "cutouts", "psf", "sersic_fit", "padded_pixels")
#: The fields of the cutout settings that shape the images.
CUTOUT_IDENTITY = ("source", "url", "coadd_root", "half_width", "planes")
#: Every output folder and file a build writes, with what it holds (the cutout cache is apart: it
#: outlives builds).
OUTPUTS = {
    "hdf5/": "the released files: 5x127x127 and 5x64x64 images with every column, per split",
    "galaxies/": "the dataset as Parquet shards per split (images, catalog and morphology columns)",
    "csv/": "the tabular columns of each split",
    "datacard/": "the data card (index.html, README.md)",
    "catalog/": "the catalog rows kept, rejected (with reasons), duplicates and failed galaxies",
    "summary.json": "the funnel from catalog rows to galaxies, and the options",
    "build.json": "what identifies this build (a rerun resumes it)",
}

PROG = "python -m pipeline"
COMMANDS = {
    "run": "build the dataset from an HSC catalog (the default when the first argument is a flag)",
    "demo": "the whole build offline: a synthetic HSC sky served by a local stand-in of the cutout service",
    "generate-catalog": "write a synthetic HSC catalog export of any size",
    "report": "make the data card of a built output again",
    "verify": "check a built output (shapes, dtypes, counts, disjoint splits)",
}
USAGE = f"""usage: {PROG} COMMAND [options]

Builds the GalaxiesML dataset (HSC PDR2 galaxies with spectroscopic redshifts, 5-band images and
morphology) as an Apache Beam job.

commands:
""" + "\n".join(f"  {name:<18}{text}" for name, text in COMMANDS.items()) + f"""

`{PROG} COMMAND --help` shows a command's options. `run` and `demo` also take every Beam
flag (--runner, --direct_num_workers, Dataflow's and Flink's): `{PROG} run --help-beam` lists them.
New here? `{PROG} demo` builds a small dataset offline in a few minutes."""


class AlreadyBuilt(Exception):
    """The output already holds this build, complete: nothing to do."""


class BuildFailed(Exception):
    """The job ran and wrote its outputs, but lost too much to call the build a success."""


#: Failure reasons that are no loss of the build's: the archive has no image of the galaxy there
#: (from a coadd mirror: no file for its patch in that filter, as the release has none where it did
#: not observe; an incomplete mirror shows the same way, in the funnel and on the data card).
NOT_LOSSES = frozenset({"no_coverage", "no_patch_file"})


def verdict(funnel: dict, max_failed_fraction: float) -> str | None:
    """Why a finished build is a failure (None when it is not): a catalog file broke off, it kept no
    galaxy, or it lost more than `max_failed_fraction` of the catalog's kept galaxies to fetch or
    morphology failures."""
    unread = funnel.get("rejected_by_reason", {}).get(UNREADABLE_FILE, 0)
    if unread:
        return (f"{unread} catalog file(s) could not be read to their end, and the rows after the break are lost "
                f"(reason {UNREADABLE_FILE} in catalog/rejected-*.parquet names each file and line)")
    if funnel["kept"] == 0:
        return f"the build kept no galaxy of {funnel['rows_read']:,} catalog rows"
    losses = {r: n for reasons in funnel.get("failed_by_stage", {}).values() for r, n in reasons.items() if r not in NOT_LOSSES}
    lost, of = sum(losses.values()), funnel.get("catalog_kept", funnel["kept"])
    if of and lost / of > max_failed_fraction:
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(losses.items(), key=lambda kv: -kv[1]))
        return (f"the build lost {lost:,} of {of:,} galaxies ({lost / of:.1%}) to failures ({reasons}), more than "
                f"--max_failed_fraction {max_failed_fraction:g}: see catalog/failed-*.parquet")
    return None


def _check_gcs(*paths: str) -> None:
    if any(p.startswith("gs://") for p in paths):
        try:
            import apache_beam.io.gcp.gcsfilesystem  # noqa: F401
            import google.cloud.storage  # noqa: F401
        except ImportError:
            raise UserError("gs:// paths need the GCP extra: pip install -e '.[gcp]'")


def _check_service(url: str, credentials: Credentials) -> None:
    """Reach the cutout service with the account, so that a wrong account or address fails before
    the job starts (a GET: the service answers it without cutting anything)."""
    try:
        reply = requests.get(url, auth=(credentials.user, credentials.password), timeout=10)
    except requests.RequestException as exc:
        raise UserError(
            f"cannot reach the HSC cutout service at {url} ({type(exc).__name__}): check the network, "
            "or --hsc_url, or use --cutout_source coadd or none"
        )
    with reply:
        if reply.status_code == 401:
            raise UserError(
                f"the HSC cutout service at {url} refused the account {credentials.user!r} (HTTP 401): check "
                "HSC_SSP_CAS_USER and HSC_SSP_CAS_PASSWORD"
            )


def identity(info: dict) -> dict:
    """The part of a build's recorded options that shapes its data (see IDENTITY)."""
    out = {k: info.get(k) for k in IDENTITY}
    if out["cutouts"]:
        out["cutouts"] = {k: out["cutouts"].get(k) for k in CUTOUT_IDENTITY}
    return out


def remove_outputs(output: str) -> None:
    """Remove every output of a build from `output` (OUTPUTS, Beam's temporary folders with them),
    never anything else there: the cutout cache, the demo's input, a user's own files stay."""
    for name in OUTPUTS:
        path = FileSystems.join(output, name.rstrip("/"))
        if FileSystems.exists(path):
            FileSystems.delete([path])


def _check_output(opts: GalaxiesMLOptions, catalog: list[list]) -> None:
    """Refuse an output directory that holds another build; stop early when it holds this build,
    complete and read from the same catalog files ((path, size) each); otherwise clear what an
    earlier run of this build wrote there (the job writes every output again, and a shard of another
    count, or Beam's temporary folder of a killed run, would stay beside the new ones; the cutout
    cache stays) and record this build's identity and its catalog files (a rerun then resumes it)."""
    info = json.loads(json.dumps({**run_info(opts), "catalog_files": catalog}))  # as it reads back
    path = FileSystems.join(opts.output, BUILD_FILE)
    if opts.overwrite:
        remove_outputs(opts.output)
    elif FileSystems.exists(path):
        with FileSystems.open(path) as f:
            other = json.load(f)
        mine, theirs = identity(info), identity(other)
        differs = [k for k in IDENTITY if mine[k] != theirs[k]]
        if differs:
            raise UserError(
                f"{opts.output} holds another build (it differs in {', '.join(differs)}): choose another "
                "--output, or pass --overwrite to replace it"
            )
        if other.get("completed") and other.get("catalog_files") == info["catalog_files"]:
            raise AlreadyBuilt(opts.output)
        remove_outputs(opts.output)
    with created_atomically(path) as f:
        f.write(json.dumps(info, indent=2, sort_keys=True).encode())


def mark_completed(opts: GalaxiesMLOptions) -> None:
    """Record in build.json that the build finished (its catalog files are recorded there already)."""
    path = FileSystems.join(opts.output, BUILD_FILE)
    with FileSystems.open(path) as f:
        info = json.load(f)
    info["completed"] = True
    with created_atomically(path) as f:
        f.write(json.dumps(info, indent=2, sort_keys=True).encode())


def preflight(opts: GalaxiesMLOptions) -> list[str]:
    """Check what can be checked before a job starts; returns the matched catalog files."""
    if not opts.catalog:
        raise UserError(
            "--catalog is required: a catalog file, glob or folder (CSV, CSV.gz, FITS, Parquet); "
            f"or try `{PROG} demo`, the whole build offline on a synthetic sky"
        )
    if not opts.output:
        raise UserError("--output is required: the directory the dataset is written to")
    _check_gcs(opts.catalog, opts.output, opts.cutout_cache or "", opts.coadd_root)
    try:
        parse_fractions(opts.split_fractions)
        extra = sample_cuts(opts)
        if opts.cutout_source != "none":
            cutout_config(opts)
    except ValueError as exc:
        raise UserError(str(exc))
    files = catalog_files(opts.catalog)
    matches = [m.path for m in files]
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
            credentials = Credentials.from_env()
        except HscAuthError as exc:
            raise UserError(f"{exc} (or choose --cutout_source coadd or none)")
        _check_service(opts.hsc_url, credentials)
    if opts.cutout_source == "coadd" and "://" not in opts.coadd_root and not os.path.isdir(
        os.path.join(opts.coadd_root, "deepCoadd-results")
    ):
        raise UserError(f"--coadd_root {opts.coadd_root!r} holds no deepCoadd-results/ folder: give the mirror's rerun folder")
    _check_output(opts, [[m.path, m.size_in_bytes] for m in files])
    return matches


def local_runner(opts: GalaxiesMLOptions) -> FnApiRunner | None:
    """The FnApiRunner where the DirectRunner is asked for (Beam's default), None for other runners.
    Beam 2.77's DirectRunner first downloads and runs the Prism runner, and falls back to the
    FnApiRunner (the one that runs --direct_running_mode and --direct_num_workers, and that our tests
    and benchmarks measure) only where that fails: the same command would run on different runners
    online and offline. The FnApiRunner gets the pipeline options as the DirectRunner gives them."""
    name = (opts.view_as(StandardOptions).runner or "DirectRunner").lower()
    if name not in ("direct", "directrunner"):
        return None
    harness = opts.view_as(WorkerOptions)
    if not opts.verbose and harness.default_sdk_harness_log_level is None:
        harness.default_sdk_harness_log_level = "CRITICAL"  # worker processes' logs follow --verbose
    options = JobServiceHandle.encode_pipeline_options(opts.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=options)
    return FnApiRunner(provision_info=ExtendedProvisionInfo(info))


def run_pipeline(opts: GalaxiesMLOptions):
    """Check the options, then run the job to completion (worker processes it starts get few malloc
    arenas; the runner sends worker inputs without the timed flush that loses data,
    pipeline.runner_fixes; the DirectRunner is run as local_runner says); returns Beam's PipelineResult."""
    preflight(opts)
    limit_malloc_arenas_in_workers()
    no_timed_flush_of_worker_inputs()
    runner = local_runner(opts)
    p = beam.Pipeline(runner=runner, options=opts)
    build(p, opts)
    workers = runner is not None and opts.view_as(DirectOptions).direct_running_mode == "multi_processing"
    with contextlib.ExitStack() as stack:
        console = stack.enter_context(worker_output_discarded()) if workers and not opts.verbose else sys.stderr
        if opts.progress_every > 0:
            if workers:  # their counts reach this process through files they write
                stack.enter_context(shared_progress())
            stack.enter_context(Progress(opts.progress_every, console))
        result = p.run()
        result.wait_until_finish()
    return result


def options(argv: list[str]) -> GalaxiesMLOptions:
    """Options from a command line, with its preset expanded; an unknown flag is an error."""
    try:
        argv, preset = expand_preset(argv)
        check_flags(argv)
    except ValueError as exc:
        raise UserError(str(exc))
    return GalaxiesMLOptions([*argv, "--preset", preset])


def run(argv: list[str]) -> dict:
    """Build the dataset; returns the summary written to summary.json."""
    opts = options(argv)
    try:
        run_pipeline(opts)
    except AlreadyBuilt:
        print(f"{opts.output} already holds this build, complete: nothing to do (--overwrite builds it again)")
        print_outputs(opts.output)
        with FileSystems.open(FileSystems.join(opts.output, "summary.json")) as f:
            return json.load(f)
    summary = finish_build(opts)
    failure = verdict(summary["funnel"], opts.max_failed_fraction)
    if failure:
        raise BuildFailed(failure)  # not marked completed: a rerun fetches the failed galaxies again
    mark_completed(opts)
    return summary


def finish_build(opts: GalaxiesMLOptions) -> dict:
    """After the job, in the launcher: the funnel printed and the data card written; returns the
    summary written to summary.json."""
    with FileSystems.open(FileSystems.join(opts.output, "summary.json")) as f:
        summary = json.load(f)
    print_funnel(summary)
    if "://" in opts.output:
        print("data card: make it from a local copy with `python -m pipeline report DIR`")
    else:
        from galaxiesml.datacard import write_datacard

        card = write_datacard(opts.output)
        print(f"data card: {card['html']}")
    print_outputs(opts.output)
    return summary


def print_funnel(summary: dict) -> None:
    f = summary["funnel"]
    rows = [("rows read", f["rows_read"])]
    rows += [(f"  rejected {k}", v) for k, v in f["rejected_by_reason"].items()]
    rows += [(f"  duplicate {k}", v) for k, v in f["duplicates_by_key"].items()]
    rows += [("kept", f["kept"])] + [(f"  {k}", v) for k, v in f["kept_by_split"].items()]
    if f["failed"]:
        rows += [(f"  failed in {stage}: {r}", n) for stage, reasons in f["failed_by_stage"].items() for r, n in reasons.items()]
    width = max(len(label) for label, _ in rows) + 2
    print("\n".join(f"{label:<{width}}{value:>10,}" for label, value in rows))


def print_outputs(output: str) -> None:
    """Each output folder and file the build left in `output`, with what it holds."""
    present = [name for name in OUTPUTS if FileSystems.exists(FileSystems.join(output, name.rstrip("/")))]
    print(f"outputs in {output}:")
    print("\n".join(f"  {name:<14}{OUTPUTS[name]}" for name in present))


ROOT = Path(__file__).resolve().parents[1]
#: Frames a crash report skips: Beam's layers, the standard library, installed packages.
LIBRARY_DIRS = tuple({sysconfig.get_paths()[k] + "/" for k in ("stdlib", "platstdlib", "purelib", "platlib")})


def crash_line(exc: BaseException) -> str:
    """A failed job in one line: the error, the Beam step it happened in and the last frame of our
    code it passed through, without Beam's layers (which wrap a worker's error in text)."""
    text = str(exc)
    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    frames += [(f, int(n), name) for f, n, name in re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)]
    ours = [f for f in frames if f[0].startswith("/") and not f[0].startswith(LIBRARY_DIRS) and f[0] != __file__]
    errors = re.findall(r"^(\w[\w.]*(?:Error|Exception|Exit|Interrupt)\b.*)$", text, re.M)
    error = errors[-1] if errors else f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    step = re.search(r"\[while running '([^']+)'\]", error) or re.search(r"\[while running '([^']+)'\]", text)
    error = re.sub(r" \[while running '[^']+'\]", "", error).strip()
    parts = [f"error: the build failed: {error}"]
    if step:
        parts.append(f"in step '{step.group(1)}'")
    if ours:
        path, line, name = ours[-1]
        shown = Path(path).relative_to(ROOT) if Path(path).is_relative_to(ROOT) else path
        parts.append(f"at {shown}:{line} ({name})")
    return " ".join(parts) + " (--verbose shows the traceback)"


def _help(argv: list[str]) -> str | None:
    """The help a `run` command line asks for, if any."""
    if "--help-beam" in argv:
        parser = options_parser(prog=f"{PROG} run", ours=False)
        return parser.format_help().replace("usage:", "Beam's own flags, taken by run and demo:\nusage:", 1)
    if "-h" in argv or "--help" in argv:
        parser = options_parser(prog=f"{PROG} run", beam=False)
        parser.usage = f"{PROG} [run] --catalog PATTERN --output DIR [options] [Beam flags]"
        parser.description = "Build the GalaxiesML dataset from an HSC catalog export."
        parser.epilog = (f"Every Beam flag works too (--runner, --direct_num_workers, Dataflow's and Flink's): "
                         f"`{PROG} run --help-beam` lists them.")
        return parser.format_help()
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    # Beam logs a failed step's traceback itself; without --verbose our one line says it all
    logging.getLogger("apache_beam").setLevel(logging.INFO if verbose else logging.CRITICAL)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command = argv.pop(0) if not argv[0].startswith("-") else "run"
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"error: unknown command {command!r}{hint}: `{PROG} --help` lists the commands", file=sys.stderr)
        return 2
    try:
        text = _help(argv) if command == "run" or "--help-beam" in argv else None
        if text:
            print(text)
            return 0
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
        elif command == "verify":
            from galaxiesml.verify import main as verify_main

            return verify_main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BuildFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a failed job: one line, the traceback on request
        if verbose:
            traceback.print_exc()
        print(crash_line(exc), file=sys.stderr)
        return 1
    return 0
