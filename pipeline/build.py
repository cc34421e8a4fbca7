"""Assembly of the job from the stage transforms, in the order of the paper's Fig. 2."""
from __future__ import annotations

import dataclasses

import apache_beam as beam
import pyarrow as pa

from galaxiesml.cuts import PAPER_RULES
from pipeline import __version__
from pipeline.options import GalaxiesMLOptions, parse_fractions, sample_cuts
from transforms.dedup import DUPLICATES, Deduplicate
from transforms.mini_sample import MiniSample
from transforms.quality_cuts import QualityCuts
from transforms.read_catalog import COUNTS, REJECTED, ReadCatalog
from transforms.splits import AssignSplits
from transforms.write_catalog import WriteCatalog


def run_info(opts: GalaxiesMLOptions) -> dict:
    """What summary.json records about how the build was made."""
    return {
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
    }


def build(p: beam.Pipeline, opts: GalaxiesMLOptions) -> dict:
    """Add the catalog stages to `p`; returns the main PCollections by name."""
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
        "read_counts": read[COUNTS],
        "kept": kept,
        "rejected": tuple(rejected) | "AllRejected" >> beam.Flatten().with_output_types(pa.Table),
        "duplicates": dedup[DUPLICATES],
    }
    outputs["summary"] = outputs | "WriteCatalog" >> WriteCatalog(opts.output, run_info(opts))
    return outputs
