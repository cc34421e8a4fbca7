"""Each catalog-stage transform inside a TestPipeline, checked with assert_that."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.dedup import Deduplicate
from transforms.quality_cuts import QualityCuts
from transforms.read_catalog import ReadCatalog
from transforms.splits import AssignSplits
from tests.catalog_rows import HEADER, csv_line, row, typed_table
from tests.conftest import hsc_csv


def column(name):
    return lambda table: table.column(name).to_pylist()


def test_read_catalog_reads_every_shard_and_routes_rejects(tmp_path, fnapi_options):
    (tmp_path / "a.csv").write_bytes(hsc_csv(HEADER, [csv_line(row(object_id=1)), "x,y"]))
    (tmp_path / "b.csv").write_bytes(hsc_csv(HEADER, [csv_line(row(object_id=2, dec="nope"))]))
    with TestPipeline(options=fnapi_options) as p:
        out = p | ReadCatalog(str(tmp_path / "*.csv"))
        ids = out.rows | "ids" >> beam.FlatMap(column("object_id"))
        reasons = out.rejected | "why" >> beam.FlatMap(
            lambda t: [(s.rsplit("/", 1)[1], l, r) for s, l, r in zip(*(t.column(c).to_pylist() for c in ("source", "line", "reason")))]
        )
        assert_that(ids, equal_to([1]), label="rows")
        assert_that(
            reasons,
            equal_to([("a.csv", 5, "malformed_row"), ("b.csv", 4, "bad_value")]),
            label="rejects",
        )


def test_quality_cuts_transform(fnapi_options):
    table = typed_table([row(object_id=1), row(object_id=2, specz_redshift=4.0)])
    with TestPipeline(options=fnapi_options) as p:
        out = p | beam.Create([table]) | QualityCuts()
        assert_that(out.kept | "k" >> beam.FlatMap(column("object_id")), equal_to([1]), label="kept")
        assert_that(
            out.rejected | "r" >> beam.FlatMap(column("reason")), equal_to(["redshift_range"]), label="rej"
        )


def test_deduplicate_across_batches_and_buckets(fnapi_options):
    # the same keys spread over three input batches, as several files would give them
    batches = [
        typed_table([row(object_id=1, specz_name="A"), row(object_id=5, specz_name="E")], [1, 2], "f1"),
        typed_table([row(object_id=2, specz_name="A"), row(object_id=5, specz_name="F")], [1, 2], "f2"),
        typed_table([row(object_id=3, specz_name="C"), row(object_id=1, specz_name="G")], [1, 2], "f0"),
    ]
    with TestPipeline(options=fnapi_options) as p:
        out = p | beam.Create(batches) | Deduplicate(buckets=4)
        kept = out["kept"] | "k" >> beam.FlatMap(lambda t: list(zip(column("source")(t), column("line")(t))))
        dups = out["duplicates"] | "d" >> beam.FlatMap(
            lambda t: list(zip(column("source")(t), column("duplicate_key")(t), column("kept_source")(t)))
        )
        # f0:2 (object 1, name G) is first in input order for object 1, so f1:1 loses to it.
        assert_that(kept, equal_to([("f0", 1), ("f0", 2), ("f1", 2)]), label="kept")
        assert_that(
            dups,
            equal_to([("f2", "specz_name", "f1"), ("f2", "object_id", "f1"), ("f1", "object_id", "f0")]),
            label="dups",
        )


def test_assign_splits_transform(fnapi_options):
    table = typed_table([row(object_id=i) for i in range(100)])
    with TestPipeline(options=fnapi_options) as p:
        out = p | beam.Create([table]) | AssignSplits(seed=3, fractions=(1.0, 0.0, 0.0))
        assert_that(out | beam.FlatMap(column("split")), equal_to(["training"] * 100))
