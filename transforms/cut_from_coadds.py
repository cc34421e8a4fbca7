"""Stage 6 from a coadd mirror (paper section 3.3): each kept galaxy's 5 bands cut from the release's
patch files instead of fetched from the cutout service, so that it scales with workers.

Each galaxy-band is keyed by the file its catalog patch names (filter, tract, patch from PDR2's
skymap_id; galaxiesml.coadds) and a bucket of its object_id, so that a crowded patch (the COSMOS
field holds thousands of spec-z galaxies in a few) is cut by several workers. A GroupByKey brings
a group to one worker, which reads the file's headers and then only the rows its stamps span,
through Beam's filesystems (local, gs://, s3://): the mirror is never listed, and memory is one
group's rows of one patch. A stamp travels as its pixels and the galaxy's position in them (from
the patch's WCS): no FITS file is written to be read again. The bands then meet again per galaxy,
with its catalog row (a CoGroupByKey on object_id), and are placed on the grid and stacked as
service cutouts are (galaxiesml.cutouts.stack_stamps): the outputs are FetchCutouts'
({"galaxies": records, "failed": records}).
"""
from __future__ import annotations

from typing import Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from galaxiesml.coadds import PatchFile, PatchKey, patch_of
from galaxiesml.cutouts import CutoutError, Stamp, stack_stamps
from galaxiesml.hsc.format import FALLBACK_FILTERS, FILTERS
from galaxiesml.schema import BANDS
from galaxiesml.storage import open_for_ranges
from transforms.fetch_cutouts import FAILED, CutoutConfig, failed_record, galaxy_record
from transforms.metrics import increment

#: Groups a patch's galaxies are cut in (by object_id): the most workers one patch can keep busy.
PATCH_BUCKETS = 8
#: The reason of a galaxy one of whose bands' results never reached the join: a runner's loss.
BAND_MISSING = "band_missing"


def named_patch(skymap_id) -> tuple[int, int, int] | None:
    """(tract, x, y) of the patch a catalog row's skymap_id names, None where it names none."""
    try:
        return patch_of(skymap_id)
    except (TypeError, ValueError):
        return None


def band_requests(table: pa.Table, buckets: int = PATCH_BUCKETS) -> Iterator[tuple[str, tuple]]:
    """(patch group key, (object_id, band, ra, dec)) for every band of every row; a row whose
    skymap_id names no patch asks for nothing (the galaxy then fails with that reason)."""
    for oid, ra, dec, skymap_id in zip(*(table.column(c).to_pylist() for c in ("object_id", "ra", "dec", "skymap_id"))):
        patch = named_patch(skymap_id)
        if patch is None:
            continue
        tract, x, y = patch
        for band in BANDS:
            yield f"{FILTERS[band]}|{tract}|{x}|{y}|{oid % buckets}", (oid, band, ra, dec)


class _CutPatch(beam.DoFn):
    """One group of one patch file: open it once, cut every member's stamp."""

    def __init__(self, config: CutoutConfig):
        self.config = config

    def _open(self, key: PatchKey) -> tuple[str, str | None]:
        """(the path of the file to read, its filter), falling back to HSC-R2 / HSC-I2 as the service
        client does; (the path asked for, None) when neither is in the mirror."""
        for filt in filter(None, (key.filter, FALLBACK_FILTERS.get(key.filter))):
            path = PatchKey(filt, key.tract, key.x, key.y).path(self.config.coadd_root)
            if FileSystems.exists(path):
                return path, filt
        return key.path(self.config.coadd_root), None

    def process(self, group: tuple[str, list]):
        filt, tract, x, y, _ = group[0].split("|")
        members = list(group[1])
        path, used = self._open(PatchKey(filt, int(tract), int(x), int(y)))
        if used is None:
            for oid, band, _, _ in members:
                yield oid, (band, None, None, "no_patch_file", f"{band} band: {path} is not in the mirror")
            return
        results = []  # all of the group's, before any is emitted: a file that breaks half-way fails every member once
        try:
            with open_for_ranges(path) as f:
                patch = PatchFile(f, self.config.planes, name=path)
                pixels = [patch.pixel(ra, dec) for _, _, ra, dec in members]
                boxes = [patch.box_at(x, y, self.config.half_width) for x, y in pixels]
                stamps = iter(patch.stamps([b for b in boxes if b is not None]))
                for (oid, band, ra, dec), box, (x, y) in zip(members, boxes, pixels):
                    if box is None:
                        results.append((oid, (band, None, None, "off_patch", f"{band} band: ({ra}, {dec}) is not on {path}")))
                    else:
                        results.append((oid, (band, used, Stamp(next(stamps), x - box[0], y - box[2]), None, None)))
        except Exception as exc:  # a damaged file fails its galaxies, with the reason, not the run
            results = [(oid, (band, None, None, "unreadable_patch_file", f"{band} band: {path}: {type(exc).__name__}: {exc}"))
                       for oid, band, _, _ in members]
        yield from results


def _assemble(joined: tuple[int, dict]):
    """A galaxy's catalog row and its bands' stamps -> its record, or a failed record."""
    oid, parts = joined
    (row,) = parts["row"]
    bands = {band: result for band, *result in parts["bands"]}
    stamps, filters = {}, {}
    problem = None
    asked = named_patch(row.get("skymap_id")) is not None  # else band_requests asked for no band
    for band in BANDS:
        if band not in bands:
            problem = problem or (
                (BAND_MISSING, f"{band} band: no stamp and no failure reached this galaxy (the runner lost it; a rerun "
                               "cuts it again)")
                if asked else ("no_patch", f"skymap_id {row.get('skymap_id')} names no patch")
            )
            continue
        filt, stamp, reason, detail = bands[band]
        if stamp is None:
            problem = problem or (reason, detail)
        else:
            stamps[band], filters[band] = stamp, filt
    try:
        if problem:
            raise CutoutError(*problem)
        img = stack_stamps(oid, stamps, tuple(filters[b] for b in BANDS))
    except CutoutError as exc:
        increment({"cutouts.fetched": 1, f"failed.cutout.{exc.reason}": 1})
        yield beam.pvalue.TaggedOutput(FAILED, failed_record(row, "cutout", exc.reason, exc.detail))
        return
    increment({"cutouts.fetched": 1})
    yield galaxy_record(row, img)


class CutFromCoadds(beam.PTransform):
    """Kept rows (tables) -> {"galaxies": one record per galaxy with its image, "failed"}, cut from
    the coadd mirror at config.coadd_root."""

    def __init__(self, config: CutoutConfig, buckets: int = PATCH_BUCKETS):
        super().__init__()
        self.config = config
        self.buckets = buckets

    def expand(self, kept):
        rows = kept | "Rows by object_id" >> beam.FlatMap(lambda t: ((r["object_id"], r) for r in t.to_pylist()))
        cut = (
            kept
            | "Bands by patch" >> beam.FlatMap(band_requests, self.buckets)
            | "Group by patch" >> beam.GroupByKey()
            | "Cut stamps" >> beam.ParDo(_CutPatch(self.config))
        )
        return (
            {"row": rows, "bands": cut}
            | "Bands by galaxy" >> beam.CoGroupByKey()
            | "Decode and stack" >> beam.FlatMap(_assemble).with_outputs(FAILED, main="galaxies")
        )
