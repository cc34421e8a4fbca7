"""Assembly of the job from the stage transforms, in the order of the paper's Fig. 2."""
from __future__ import annotations

import dataclasses

import apache_beam as beam
import pyarrow as pa

from galaxiesml.cuts import PAPER_RULES
from galaxiesml.funnel import count_by
from pipeline import __version__
from pipeline.options import GalaxiesMLOptions, cutout_config, parse_fractions, sample_cuts
from transforms.dedup import DUPLICATES, Deduplicate
from transforms.mini_sample import MiniSample
from transforms.quality_cuts import QualityCuts
from transforms.read_catalog import COUNTS, REJECTED, ReadCatalog
from transforms.splits import AssignSplits
from transforms.write_catalog import WriteCatalog, WriteSummary


def versions() -> dict[str, str]:
    """The versions of this tool and of the libraries that shape its output."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"galaxiesml-builder": __version__}
    for package in ("apache-beam", "numpy", "pyarrow", "astropy", "sep", "scipy", "galsim"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "absent"
    return out


def run_info(opts: GalaxiesMLOptions) -> dict:
    """What summary.json records about how the build was made."""
    info = {
        "tool": "galaxiesml-builder",
        "version": __version__,
        "catalog": opts.catalog,
        "preset": opts.preset,
        "split_seed": opts.split_seed,
        "split_fractions": list(parse_fractions(opts.split_fractions)),
        "dedup_buckets": opts.dedup_buckets,
        "extra_cuts": {k: v for k, v in dataclasses.asdict(sample_cuts(opts)).items() if v},
        "mini_size": opts.mini_size,
        "mini_seed": opts.mini_seed,
        "cutout_source": opts.cutout_source,
        "versions": versions(),
    }
    if opts.synthetic_sky:
        info["synthetic_sky"] = opts.synthetic_sky
    if opts.cutout_source != "none":
        info["cutouts"] = dataclasses.asdict(cutout_config(opts))  # no credentials: they stay in the environment
        if opts.synthetic_sky:  # a loopback address of this run alone, not where the images come from
            info["cutouts"]["url"] = "the demo's stand-in of the cutout service, on loopback"
        info["psf"] = opts.psf or "Moffat FWHM 0.7 arcsec"
        info["sersic_fit"] = not opts.no_sersic
        info["padded_pixels"] = opts.padded_pixels
    return info


def _galaxy_counts(record: dict) -> dict:
    return {f"kept.{record['row']['split']}": 1}


def _failed_counts(record: dict) -> dict:
    return {f"failed.{record['stage']}.{record['reason']}": 1}


def build(p: beam.Pipeline, opts: GalaxiesMLOptions) -> dict:
    """Add every stage to `p`; returns the main PCollections by name."""
    extra = sample_cuts(opts)
    read = p | "ReadCatalog" >> ReadCatalog(opts.catalog, opts.catalog_batch_rows, extra.require_true)
    cut = read.rows | "QualityCuts" >> QualityCuts(PAPER_RULES + extra.rules())
    dedup = cut.kept | "Deduplicate" >> Deduplicate(opts.dedup_buckets)
    kept, rejected = dedup["kept"], [read[REJECTED], cut[REJECTED]]
    if opts.mini_size > 0:
        mini = kept | "MiniSample" >> MiniSample(opts.mini_size, opts.mini_seed)
        kept = mini.kept
        rejected.append(mini[REJECTED])
    kept = kept | "AssignSplits" >> AssignSplits(opts.split_seed, parse_fractions(opts.split_fractions))
    outputs = {
        "kept": kept,
        "rejected": tuple(rejected) | "AllRejected" >> beam.Flatten().with_output_types(pa.Table),
        "duplicates": dedup[DUPLICATES],
    }
    counts = [
        read[COUNTS],
        outputs["rejected"] | "Count rejected" >> beam.Map(count_by, "reason", "rejected"),
        outputs["duplicates"] | "Count duplicates" >> beam.Map(count_by, "duplicate_key", "duplicates"),
        kept | "Count catalog kept" >> beam.Map(count_by, "split", "catalog_kept"),
    ]
    if opts.cutout_source == "none":
        counts.append(kept | "Count kept" >> beam.Map(count_by, "split", "kept"))
    else:
        # imported here: a catalog-only build does not load (or hold in memory) the image libraries
        from transforms.cut_from_coadds import CutFromCoadds
        from transforms.fetch_cutouts import FAILED, FetchCutouts
        from transforms.measure_morphology import MeasureMorphology
        from transforms.write_galaxies import WriteGalaxies

        config = cutout_config(opts)
        if config.source == "coadd":
            fetched = kept | "CutFromCoadds" >> CutFromCoadds(config)
        else:
            fetched = kept | "FetchCutouts" >> FetchCutouts(config)
        measured = fetched["galaxies"] | "MeasureMorphology" >> MeasureMorphology(opts.psf, not opts.no_sersic, opts.padded_pixels)
        outputs["galaxies"] = measured.galaxies
        outputs["failed"] = (fetched[FAILED], measured[FAILED]) | "AllFailed" >> beam.Flatten()
        outputs["galaxy_files"] = measured.galaxies | "WriteGalaxies" >> WriteGalaxies(
            opts.output, opts.galaxies_per_shard
        )
        counts.append(measured.galaxies | "Count kept" >> beam.Map(_galaxy_counts))
        counts.append(outputs["failed"] | "Count failed" >> beam.Map(_failed_counts))
    outputs["written"] = outputs | "WriteCatalog" >> WriteCatalog(opts.output)
    info = run_info(opts)
    outputs["summary"] = tuple(counts) | "WriteSummary" >> WriteSummary(opts.output, info)
    if "galaxy_files" in outputs:
        from galaxiesml.hdf5 import release_attrs
        from transforms.consolidate import Consolidate

        funnel = outputs["summary"] | "Funnel" >> beam.Map(lambda summary: summary["funnel"])
        outputs["released"] = (
            outputs["galaxy_files"]
            | "Shard names" >> beam.FlatMap(lambda split_files: split_files[1])
            | "Consolidate" >> Consolidate(opts.output, release_attrs(info), opts.hdf5_compression or None, funnel=funnel)
        )
    return outputs
