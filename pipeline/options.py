"""The job's options: one PipelineOptions subclass, so every standard Beam flag works beside them,
and named presets that set a group of them."""
from __future__ import annotations

import argparse
import difflib
import os

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from galaxiesml.catalog import DEFAULT_BATCH_ROWS
from galaxiesml.cuts import SampleCuts
from galaxiesml.hsc.format import GALAXIES_PER_REQUEST, PAPER_HALF_WIDTH, PDR2_CUTOUT_URL
from galaxiesml.schema import BANDS
from galaxiesml.splits import check_fractions

#: ~500 KB a galaxy (image, 64 x 64 crop, flags): 256 galaxies make Parquet shards of ~125 MB.
DEFAULT_PER_SHARD = 256

#: Named groups of options. Flags given on the command line override a preset's.
PRESETS: dict[str, tuple[str, list[str]]] = {
    "paper": ("the paper's sample: its cuts and nothing more (the default)", []),
    "bright": (
        "a brighter, cleaner sample: i < 22.5 and S/N > 10 (magsigma < 0.1) in every band",
        ["--max_mag", "i=22.5", "--max_magsigma", ",".join(f"{b}=0.1" for b in BANDS)],
    ),
    "mini": (
        "a laptop-size build: the paper's cuts, then 10,000 galaxies stratified in redshift",
        ["--mini_size", "10000"],
    ),
}


def expand_preset(argv: list[str]) -> tuple[list[str], str]:
    """Replace `--preset NAME` by the preset's flags, placed first so explicit flags win."""
    argv = list(argv)
    name = "paper"
    for i, arg in enumerate(argv):
        if arg == "--preset" or arg.startswith("--preset="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            del argv[i : i + (1 if "=" in arg else 2)]
            name = value
            break
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return [*PRESETS[name][1], *argv], name


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.6,0.2,0.2' -> (0.6, 0.2, 0.2), validated."""
    try:
        return check_fractions(tuple(float(v) for v in text.split(",")))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"--split_fractions takes three fractions adding up to 1, like 0.6,0.2,0.2 ({exc})")


def _numbers(text: str | None, flag: str, count: int) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise ValueError(f"{flag} takes {count} comma-separated numbers, got {text!r}")
    return values


def _band_limits(text: str | None, flag: str) -> dict[str, float]:
    limits: dict[str, float] = {}
    for item in filter(None, (text or "").split(",")):
        band, _, value = item.partition("=")
        try:
            if band.strip() not in BANDS:
                raise ValueError
            limits[band.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{flag} takes band=limit pairs like i=22.5,r=23 (bands g,r,i,z,y), got {text!r}")
    return limits


def sample_cuts(opts: "GalaxiesMLOptions") -> SampleCuts:
    """The extra cuts the options ask for."""
    window = _numbers(opts.redshift_window, "--redshift_window", 2)
    box = _numbers(opts.sky_box, "--sky_box", 4)
    try:
        tracts = tuple(int(t) for t in filter(None, (opts.tracts or "").split(",")))
    except ValueError:
        raise ValueError(f"--tracts takes comma-separated tract numbers, got {opts.tracts!r}")
    return SampleCuts(
        max_mag=_band_limits(opts.max_mag, "--max_mag"),
        max_magsigma=_band_limits(opts.max_magsigma, "--max_magsigma"),
        redshift_window=window,  # type: ignore[arg-type]
        sky_box=box,  # type: ignore[arg-type]
        tracts=tracts,
        require_true=tuple(c.strip() for c in filter(None, (opts.require_true or "").split(","))),
    )


#: Concurrent requests the HSC service allows one account, over all of a job's workers.
HSC_ACCOUNT_STREAMS = 2


def stream_limit(opts: "GalaxiesMLOptions") -> int:
    """Concurrent cutout requests per worker process: --max_streams, or by default the account's
    limit shared among DirectRunner's worker processes (other runners: set it, see the README)."""
    if opts.max_streams:
        return opts.max_streams
    direct = opts.view_as(DirectOptions)
    workers = 1
    if direct.direct_running_mode == "multi_processing":
        workers = direct.direct_num_workers or os.cpu_count() or 1
    return max(1, HSC_ACCOUNT_STREAMS // workers)


def cutout_config(opts: "GalaxiesMLOptions"):
    """The cutout stage's settings from the options (a transforms.fetch_cutouts.CutoutConfig)."""
    from transforms.fetch_cutouts import CutoutConfig  # the image libraries load only when used

    if opts.cutout_source == "local" or opts.patch_root:
        raise ValueError(
            "--cutout_source local and --patch_root are gone: use --cutout_source coadd --coadd_root DIR (the same "
            "folder, holding deepCoadd-results/), which reads only each galaxy's own patch file"
        )
    if opts.cutout_source == "coadd" and not opts.coadd_root:
        raise ValueError("--cutout_source coadd needs --coadd_root: the mirror's folder holding deepCoadd-results/")
    planes = tuple(p.strip() for p in opts.cutout_planes.split(",") if p.strip())
    if not planes or planes[0] != "image" or set(planes) - {"image", "mask", "variance"}:
        raise ValueError(f"--cutout_planes takes image, optionally with mask and variance, got {opts.cutout_planes!r}")
    cache = opts.cutout_cache or FileSystems.join(opts.output, "cache", "cutouts")
    return CutoutConfig(
        source=opts.cutout_source,
        url=opts.hsc_url,
        coadd_root=opts.coadd_root,
        half_width=opts.cutout_half_width,
        planes=planes,
        cache="" if cache == "none" else cache,
        max_streams=stream_limit(opts),
        galaxies_per_request=opts.galaxies_per_request,
    )


class UserError(Exception):
    """A mistake the user can fix; printed as one line without a traceback."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises ValueError instead of printing usage and exiting."""

    def error(self, message: str):
        raise ValueError(message)


def _option_classes(cls: type = PipelineOptions) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_option_classes(sub)]
    return out


def options_parser(*, prog: str = "", beam: bool = True, ours: bool = True, parents=()) -> argparse.ArgumentParser:
    """A parser of the flags a build takes: ours, Beam's (every PipelineOptions subclass), or both,
    plus those of `parents` (another command's own flags; their flags ours share are taken from the
    parent, which this changes: pass a parser made for the purpose)."""
    parser = _Parser(prog=prog or None, allow_abbrev=False, add_help=False, parents=list(parents), conflict_handler="resolve")
    for cls in sorted(set(_option_classes()), key=lambda c: c.__name__):
        if (cls is GalaxiesMLOptions and ours) or (cls is not GalaxiesMLOptions and beam):
            cls._add_argparse_args(parser)
    return parser


def check_flags(argv: list[str], parents=()) -> None:
    """Raise ValueError for the first flag of `argv` that no option knows (Beam would drop it
    silently), naming the closest known flag; also for a value a flag cannot take."""
    parser = options_parser(parents=parents)
    _, unknown = parser.parse_known_args(argv)
    known = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    for arg in unknown:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown option {flag}{hint}: --help lists the options")
    if unknown:
        raise ValueError(f"unexpected argument {unknown[0]!r}: every option is a --flag (--help lists them)")


class GalaxiesMLOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("GalaxiesML")
        group.add_argument(
            "--catalog",
            help="catalog file, glob or folder, on any Beam filesystem: HSC export CSV, CSV(.gz), FITS table "
            "or Parquet",
        )
        group.add_argument("--output", help="output directory (any Beam filesystem)")
        group.add_argument(
            "--preset",
            default="paper",
            help="a named group of options: "
            + "; ".join(f"{name}: {text}" for name, (text, _) in PRESETS.items()),
        )
        group.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the build found in --output: its outputs are removed first (the cutout cache is kept)",
        )
        group.add_argument(
            "--progress_every", type=float, default=5.0, help="seconds between progress lines (0: none)"
        )
        group.add_argument("--verbose", action="store_true", help="Beam's own logs, and tracebacks on errors")
        group.add_argument(
            "--synthetic_sky",
            default="",
            help="set by `demo`: the synthetic sky the catalog and cutouts come from (named in the build's "
            "identity and on the data card, in place of the stand-in's loopback address)",
        )
        group.add_argument(
            "--split_seed", type=int, default=0, help="seed of the train/validation/test assignment"
        )
        group.add_argument(
            "--split_fractions",
            default="0.6,0.2,0.2",
            help="training,validation,testing fractions (the paper's 60/20/20 by default)",
        )
        group.add_argument(
            "--dedup_buckets",
            type=int,
            default=64,
            help="hash partitions of each dedup GroupByKey (more spreads the work over more workers)",
        )
        group.add_argument(
            "--catalog_batch_rows",
            type=int,
            default=DEFAULT_BATCH_ROWS,
            help="rows per Arrow batch when reading table files",
        )
        images = parser.add_argument_group("images and morphology")
        images.add_argument(
            "--cutout_source",
            choices=["service", "coadd", "none", "local"],
            default="service",
            help="where the 5-band cutouts come from: the HSC cutout service (credentials from "
            "HSC_SSP_CAS_USER / HSC_SSP_CAS_PASSWORD), a mirror of the coadd release (--coadd_root: "
            "scales with workers), or none (catalog stages only)",
        )
        images.add_argument("--hsc_url", default=PDR2_CUTOUT_URL, help="the das_cutout endpoint (or a stand-in's)")
        images.add_argument(
            "--coadd_root",
            default="",
            help="a mirror of the coadd release's rerun, on any Beam filesystem (the folder holding "
            "deepCoadd-results/<FILTER>/<tract>/<x>,<y>/calexp-*.fits); it is never listed",
        )
        images.add_argument("--patch_root", default="", help=argparse.SUPPRESS)  # gone: a one-line error says so
        images.add_argument(
            "--cutout_half_width",
            type=float,
            default=PAPER_HALF_WIDTH,
            help="half width asked for, arcsec: the paper's 10 gives ~119 px, zero-padded to 127 (as "
            "released); 10.584 gives a full 127 px",
        )
        images.add_argument(
            "--cutout_planes", default="image", help="HSC planes kept: image, or image,mask,variance"
        )
        images.add_argument(
            "--cutout_cache",
            default="",
            help="cache of fetched cutouts, any Beam filesystem (default <output>/cache/cutouts; 'none' to disable)",
        )
        images.add_argument(
            "--max_streams",
            type=int,
            default=0,
            help="concurrent requests per worker process (the HSC service allows 2 per account in all: "
            "keep workers x max_streams <= 2); default 2 divided among DirectRunner's worker processes",
        )
        images.add_argument(
            "--galaxies_per_request", type=int, default=GALAXIES_PER_REQUEST, help="galaxies per cutout request (<= 198)"
        )
        images.add_argument(
            "--max_failed_fraction",
            type=float,
            default=0.05,
            help="the build fails (exit 1, after writing every output) when more than this share of the "
            "catalog's kept galaxies is lost to fetch or morphology failures (no coverage in the archive is "
            "not a failure); a build that keeps no galaxy always fails",
        )
        images.add_argument("--psf", default="", help="FITS cube of 5 PSF images (g..y); default a Moffat FWHM 0.7\"")
        images.add_argument("--no_sersic", action="store_true", help="skip the Sersic fit (sersic_index NaN)")
        images.add_argument(
            "--padded_pixels",
            choices=["zero", "missing"],
            default="zero",
            help="how the morphology sees pixels the cutout did not cover: zero, as stored and as the paper's "
            "Source Extractor saw them (the default), or missing (no data; see docs/morphology.md)",
        )
        images.add_argument(
            "--hdf5_compression", default="", help="compression of the HDF5 images (e.g. gzip, lzf); none by default"
        )
        images.add_argument(
            "--galaxies_per_shard", type=int, default=DEFAULT_PER_SHARD, help="galaxies per Parquet shard (~0.5 MB each)"
        )
        cuts = parser.add_argument_group("extra cuts, on top of the paper's (each its own reason)")
        cuts.add_argument("--max_mag", help="keep mag < limit, per band: i=22.5,r=23")
        cuts.add_argument("--max_magsigma", help="keep magsigma < limit, per band: i=0.05")
        cuts.add_argument("--redshift_window", help="keep lo < z < hi: 0.1,2.5")
        cuts.add_argument("--sky_box", help="keep ra_min <= ra <= ra_max, dec_min <= dec <= dec_max: 149,151,1,3")
        cuts.add_argument("--tracts", help="keep these tracts (skymap_id // 10000): 9813,9814")
        cuts.add_argument("--require_true", help="boolean catalog columns that must be true: col_a,col_b")
        cuts.add_argument(
            "--mini_size",
            type=int,
            default=0,
            help="keep only N galaxies, chosen by hashed object_id, stratified in redshift "
            "(the same N gives the same galaxies; a larger N contains a smaller one)",
        )
        cuts.add_argument("--mini_seed", type=int, default=0, help="seed of the mini build's choice")
