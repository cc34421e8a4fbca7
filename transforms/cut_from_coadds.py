"""Stage 6 from a coadd mirror (paper section 3.3): each kept galaxy's 5 bands cut from the release's
patch files instead of fetched from the cutout service, so that it scales with workers.

Each galaxy's catalog row is keyed by the patch its skymap_id names (tract, patch; galaxiesml.coadds);
a crowded patch (the COSMOS field holds thousands of spec-z galaxies in a few) is split by object_id
into a group per GROUP_GALAXIES galaxies, up to PATCH_BUCKETS, so that several workers cut it, while
a sparse one is one group, whose worker opens its five files once. A GroupByKey brings a group to one worker, which
opens the patch's file of each band once, reads its headers, and then, CHUNK galaxies at a time
(in order of declination, so that neighbours share rows), reads only the rows their stamps span,
through Beam's filesystems (local, gs://, s3://). The mirror is never listed. A chunk's galaxies
are placed on the grid and stacked as service cutouts are (galaxiesml.cutouts.stack_stamps) and go
on as records before the next chunk is read: the pixels are never shuffled, and a worker holds one
chunk's rows and stamps, however large the patch's group or the build. The outputs are
FetchCutouts' ({"galaxies": records, "failed": records}).
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from galaxiesml.coadds import PatchFile, PatchKey, patch_of
from galaxiesml.cutouts import CutoutError, Stamp, stack_stamps
from galaxiesml.hsc.format import FALLBACK_FILTERS, FILTERS
from galaxiesml.memory import release_free_memory
from galaxiesml.schema import BANDS
from galaxiesml.storage import open_for_ranges
from transforms.fetch_cutouts import FAILED, CutoutConfig, failed_record, galaxy_record
from transforms.metrics import increment

#: The most groups a crowded patch's galaxies are cut in (by object_id): workers one patch keeps busy.
PATCH_BUCKETS = 8
#: Galaxies a patch has per group before it is split: each group opens the patch's five files, so a
#: sparse patch (most of them: a few spec-z galaxies each) is cut by one group.
GROUP_GALAXIES = 64
#: Galaxies whose 5 bands are read, stacked and handed on at a time: what a group holds in memory.
CHUNK = 32


def named_patch(skymap_id) -> tuple[int, int, int] | None:
    """(tract, x, y) of the patch a catalog row's skymap_id names, None where it names none."""
    try:
        return patch_of(skymap_id)
    except (TypeError, ValueError):
        return None


def _failed(row: dict, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
    increment({"cutouts.fetched": 1, f"failed.cutout.{reason}": 1})
    return beam.pvalue.TaggedOutput(FAILED, failed_record(row, "cutout", reason, detail))


def rows_by_patch(table: pa.Table) -> Iterator:
    """("tract|x|y", row) for every row; a row whose skymap_id names no patch fails here."""
    for row in table.to_pylist():
        patch = named_patch(row.get("skymap_id"))
        if patch is None:
            yield _failed(row, "no_patch", f"skymap_id {row.get('skymap_id')} names no patch")
        else:
            yield "|".join(map(str, patch)), row


def group_key(patch: str, object_id: int, galaxies: int, buckets: int = PATCH_BUCKETS) -> str:
    """The group a galaxy of a patch holding `galaxies` is cut in: one group per GROUP_GALAXIES of
    them, at most `buckets`, split by object_id."""
    return f"{patch}|{object_id % min(buckets, -(-galaxies // GROUP_GALAXIES))}"


def _by_group(keyed: tuple[str, dict], counts: dict[str, int], buckets: int) -> tuple[str, dict]:
    patch, row = keyed
    return group_key(patch, row["object_id"], counts[patch], buckets), row


class _CutPatch(beam.DoFn):
    """One group of one patch: open its file of each band once, cut and stack every member."""

    def __init__(self, config: CutoutConfig):
        self.config = config

    def _open(self, files: ExitStack, key: PatchKey) -> tuple[PatchFile, str] | CutoutError:
        """The band's file (falling back to HSC-R2 / HSC-I2 as the service client does) and the
        filter it holds, or why there is none to cut from. A file is opened without asking first
        whether it exists (on gs:// that is a request and a new client each time); only a file that
        cannot be read is looked for, to tell a missing file from a damaged one."""
        for filt in filter(None, (key.filter, FALLBACK_FILTERS.get(key.filter))):
            path = PatchKey(filt, key.tract, key.x, key.y).path(self.config.coadd_root)
            try:
                return PatchFile(files.enter_context(open_for_ranges(path)), self.config.planes, name=path), filt
            except Exception as exc:
                if FileSystems.exists(path):
                    return _unreadable(path, exc)
        return CutoutError("no_patch_file", f"{key.path(self.config.coadd_root)} is not in the mirror")

    def process(self, group: tuple[str, list]):
        tract, x, y, _ = (int(v) for v in group[0].split("|"))
        rows = sorted(group[1], key=lambda r: (r["dec"], r["object_id"]))
        with ExitStack() as files:
            bands = {b: self._open(files, PatchKey(FILTERS[b], tract, x, y)) for b in BANDS}
            for start in range(0, len(rows), CHUNK):
                yield from self._cut(bands, rows[start : start + CHUNK])
                release_free_memory()

    def _cut(self, bands: dict, rows: list[dict]) -> Iterator:
        """Records (or failed records) of a chunk of the group's rows. A galaxy fails for the first
        band, in g..y order, that gives no stamp; a file that breaks fails its band for the rest of
        the group."""
        problems: list[CutoutError | None] = [None] * len(rows)
        stamps: list[dict[str, Stamp]] = [{} for _ in rows]
        for band in BANDS:
            opened = bands[band]
            if isinstance(opened, CutoutError):
                problems = [p or opened.in_band(band) for p in problems]
                continue
            patch, _ = opened
            todo = [k for k, p in enumerate(problems) if p is None]
            try:
                pixels = {k: patch.pixel(rows[k]["ra"], rows[k]["dec"]) for k in todo}
                boxes = {k: patch.box_at(*pixels[k], self.config.half_width) for k in todo}
                on = [k for k in todo if boxes[k] is not None]
                for k, cut in zip(on, patch.stamps([boxes[k] for k in on])):
                    stamps[k][band] = Stamp(cut, pixels[k][0] - boxes[k][0], pixels[k][1] - boxes[k][2])
            except Exception as exc:
                bands[band] = _unreadable(patch.name, exc)
                problems = [p or bands[band].in_band(band) for p in problems]
                continue
            for k in todo:
                if boxes[k] is None:
                    problems[k] = CutoutError("off_patch", f"({rows[k]['ra']}, {rows[k]['dec']}) is not on {patch.name}").in_band(band)
        for row, problem, stamp in zip(rows, problems, stamps):
            if problem is None:
                try:
                    img = stack_stamps(row["object_id"], stamp, tuple(bands[b][1] for b in BANDS))
                except CutoutError as exc:
                    problem = exc
            if problem is None:
                increment({"cutouts.fetched": 1})
                yield galaxy_record(row, img)
            else:
                yield _failed(row, problem.reason, problem.detail)


def _unreadable(path: str, exc: Exception) -> CutoutError:
    return CutoutError("unreadable_patch_file", f"{path}: {type(exc).__name__}: {exc}")


class CutFromCoadds(beam.PTransform):
    """Kept rows (tables) -> {"galaxies": one record per galaxy with its image, "failed"}, cut from
    the coadd mirror at config.coadd_root."""

    def __init__(self, config: CutoutConfig, buckets: int = PATCH_BUCKETS):
        super().__init__()
        self.config = config
        self.buckets = buckets

    def expand(self, kept):
        keyed = kept | "Rows by patch" >> beam.FlatMap(rows_by_patch).with_outputs(FAILED, main="rows")
        per_patch = (
            keyed.rows
            | "Patches" >> beam.Map(lambda kv: (kv[0], 1))
            | "Galaxies per patch" >> beam.CombinePerKey(sum)
        )
        cut = (
            keyed.rows
            | "Split crowded patches" >> beam.Map(_by_group, beam.pvalue.AsDict(per_patch), self.buckets)
            | "Group by patch" >> beam.GroupByKey()
            | "Cut and stack" >> beam.ParDo(_CutPatch(self.config)).with_outputs(FAILED, main="galaxies")
        )
        failed = (keyed[FAILED], cut[FAILED]) | "All cutout failures" >> beam.Flatten()
        return {"galaxies": cut.galaxies, FAILED: failed}
