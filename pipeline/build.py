"""Assembly of the job from the stage transforms, in the order of the paper's Fig. 2."""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from pipeline import __version__
from pipeline.options import GalaxiesMLOptions, parse_fractions
from transforms.dedup import DUPLICATES, Deduplicate
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
        "split_seed": opts.split_seed,
        "split_fractions": list(parse_fractions(opts.split_fractions)),
        "dedup_buckets": opts.dedup_buckets,
    }


def build(p: beam.Pipeline, opts: GalaxiesMLOptions) -> dict:
    """Add the catalog stages to `p`; returns the main PCollections by name."""
    read = p | "ReadCatalog" >> ReadCatalog(opts.catalog, opts.catalog_batch_rows)
    cut = read.rows | "QualityCuts" >> QualityCuts()
    dedup = cut.kept | "Deduplicate" >> Deduplicate(opts.dedup_buckets)
    kept = dedup["kept"] | "AssignSplits" >> AssignSplits(
        opts.split_seed, parse_fractions(opts.split_fractions)
    )
    rejected = (read[REJECTED], cut[REJECTED]) | "AllRejected" >> beam.Flatten().with_output_types(pa.Table)
    outputs = {"read_counts": read[COUNTS], "kept": kept, "rejected": rejected, "duplicates": dedup[DUPLICATES]}
    outputs["summary"] = outputs | "WriteCatalog" >> WriteCatalog(opts.output, run_info(opts))
    return outputs
