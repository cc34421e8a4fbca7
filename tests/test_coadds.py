"""Stamps cut from a release-shaped coadd mirror read only what they need and give the same pixels
as the cutout service (here its stand-in) gives for the same request."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems

from galaxiesml.coadds import PatchFile, PatchKey, patch_of
from galaxiesml.cutouts import Stamp, decode_band, place_stamp
from galaxiesml.hsc.format import FILTERS, PAPER_HALF_WIDTH, cutout_pixels
from galaxiesml.sky import make_sky
from galaxiesml.standins.mirror import MirrorSky

BORDER = 100


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    sky, rows = make_sky(40, seed=21, patch_px=400, empty_share=0.0, band_gap_share=0.0, old_filter_share=0.0)
    root = tmp_path_factory.mktemp("mirror")
    files = sky.write_patches(root, bands=("g", "i"), border=BORDER, catalogs=True)
    galaxies = {r["object_id"]: r for r in rows.to_pylist()}
    truth = [t for t in sky.truth.to_pylist() if t["kind"] == "galaxy" and t["object_id"] in galaxies]
    return sky, root, files, truth, galaxies


def test_the_release_names_and_skymap_ids():
    assert patch_of(98130405) == (9813, 4, 5)
    assert PatchKey("HSC-I", 9813, 4, 5).path("gs://bucket/pdr2_wide/") == (
        "gs://bucket/pdr2_wide/deepCoadd-results/HSC-I/9813/4,5/calexp-HSC-I-9813-4,5.fits"
    )
    with pytest.raises(ValueError):
        patch_of(0)


def test_a_mirror_has_the_release_layout_with_borders_and_catalogs_beside(mirror):
    sky, root, files, *_ = mirror
    folder = files[0].parent
    assert sorted(p.name.split("-")[0] for p in folder.iterdir()) == ["calexp", "meas"]
    with open(files[0], "rb") as f:
        patch = PatchFile(f, ("image", "mask", "variance"))
    tract, x, y = (int(v) for v in [files[0].parts[-3], *files[0].parts[-2].split(",")])
    inner = sky.layout.patch_bounds(x, y)
    expect = (min(inner[1] + BORDER, sky.layout.nx) - max(inner[0] - BORDER, 0),
              min(inner[3] + BORDER, sky.layout.ny) - max(inner[2] - BORDER, 0))
    assert patch.shape == (expect[1], expect[0]) and patch.filter == files[0].parts[-4]


@pytest.mark.parametrize("open_file", [lambda p: open(p, "rb"), lambda p: FileSystems.open(str(p))], ids=["local", "beam"])
def test_stamps_from_the_mirror_are_the_services_pixels_read_row_by_row(mirror, open_file):
    sky, root, _, truth, galaxies = mirror
    checked = 0
    for t in truth[:12]:
        tract, px, py = patch_of(galaxies[t["object_id"]]["skymap_id"])
        for band in ("g", "i"):
            key = PatchKey(FILTERS[band], tract, px, py)
            with open_file(key.path(str(root))) as f:
                patch = PatchFile(f, ("image", "mask", "variance"), name=key.path(str(root)))
                box = patch.box(t["ra"], t["dec"], PAPER_HALF_WIDTH)
                assert box is not None
                (pixels,) = patch.stamps([box])
                data = patch.stamp_fits(box, pixels)
                x, y = patch.pixel(t["ra"], t["dec"])
                as_built = place_stamp(Stamp(pixels, x - box[0], y - box[2]))  # a build's way: no FITS file
                # only the rows of the stamp were read, beyond the headers
                row_bytes = patch.shape[1] * (4 + 4 + 4)
                headers = 4 * 2880 * 4  # generous: four headers of a few blocks
                assert patch.bytes_read <= (box[3] - box[2]) * row_bytes + headers
            service = sky.cutout(FILTERS[band], t["ra"], t["dec"], PAPER_HALF_WIDTH)
            mine = decode_band(data, t["ra"], t["dec"])
            theirs = decode_band(service.fits_bytes(True, True, True), t["ra"], t["dec"])
            np.testing.assert_array_equal(mine["flags"], theirs["flags"])
            np.testing.assert_allclose(mine["image"], theirs["image"], rtol=0, atol=1e-5)
            np.testing.assert_array_equal(mine["mask"], theirs["mask"])
            np.testing.assert_array_equal(mine["variance"], theirs["variance"])
            for plane in ("image", "flags", "mask", "variance"):
                np.testing.assert_array_equal(as_built[plane], mine[plane])
            checked += 1
    assert checked == 24


def test_many_stamps_of_one_patch_read_each_row_once(mirror):
    sky, root, _, truth, galaxies = mirror
    by_patch: dict = {}
    for t in truth:
        by_patch.setdefault(patch_of(galaxies[t["object_id"]]["skymap_id"]), []).append(t)
    (tract, px, py), crowd = max(by_patch.items(), key=lambda kv: len(kv[1]))
    assert len(crowd) >= 3
    path = PatchKey("HSC-I", tract, px, py).path(str(root))
    with open(path, "rb") as f:
        patch = PatchFile(f, ("image",))
        boxes = [patch.box(t["ra"], t["dec"], PAPER_HALF_WIDTH) for t in crowd]
        header_bytes = patch.bytes_read
        stamps = patch.stamps(boxes)
        rows = set().union(*(range(b[2], b[3]) for b in boxes))
        assert patch.bytes_read - header_bytes == len(rows) * patch.shape[1] * 4
    side = cutout_pixels(PAPER_HALF_WIDTH)
    for box, stamp in zip(boxes, stamps):
        assert stamp["image"].shape == (box[3] - box[2], box[1] - box[0]) and max(stamp["image"].shape) <= side


def test_a_galaxy_off_the_file_has_no_box(mirror):
    sky, root, files, truth, galaxies = mirror
    t = truth[0]
    tract, px, py = patch_of(galaxies[t["object_id"]]["skymap_id"])
    # a patch two or more away: even its border cannot hold the galaxy
    far = [p for p in files if p.parts[-4] == "HSC-I"
           and max(abs(int(v) - w) for v, w in zip(p.parts[-2].split(","), (px, py))) >= 2]
    assert far
    with open(far[-1], "rb") as f:
        assert PatchFile(f).box(t["ra"], t["dec"], PAPER_HALF_WIDTH) is None


# -- the whole build from a mirror ---------------------------------------------------------------
def build(tmp_path, catalog, *source) -> dict:
    from pipeline.cli import run

    return run(["--catalog", str(catalog), "--output", str(tmp_path), "--runner=FnApiRunner", "--progress_every=0",
                "--no_sersic", "--cutout_planes", "image,mask,variance", *source])


@pytest.fixture(scope="module")
def both_builds(tmp_path_factory):
    """One sky (some patches in HSC-R2 / HSC-I2), built from its release-shaped mirror and through
    the cutout stand-in serving the same sky."""
    from galaxiesml.hsc.credentials import Credentials
    from galaxiesml.sky import write_sky
    from galaxiesml.standins.cutout_service import CutoutServer, CutoutService

    sky, rows = make_sky(80, seed=23, patch_px=400, empty_share=0.0, band_gap_share=0.0, old_filter_share=0.15)
    root = tmp_path_factory.mktemp("coadd_build")
    catalog = write_sky(sky, rows, root / "input")["catalog"]
    sky.write_patches(root / "mirror", border=BORDER, catalogs=True)
    mirror = build(root / "from_mirror", catalog, "--cutout_source", "coadd", "--coadd_root", str(root / "mirror"))
    creds = Credentials("erin", "pw-mirror-9")
    mp = pytest.MonkeyPatch()
    mp.setenv("HSC_SSP_CAS_USER", creds.user)
    mp.setenv("HSC_SSP_CAS_PASSWORD", creds.password)
    try:
        with CutoutServer(CutoutService(sky, creds)) as server:
            service = build(root / "from_service", catalog, "--hsc_url", server.url)
        with CutoutServer(CutoutService(MirrorSky(str(root / "mirror"), sky.layout), creds)) as server:
            build(root / "from_service_of_mirror", catalog, "--hsc_url", server.url)
    finally:
        mp.undo()
    return root, mirror, service


def _galaxies(out):
    import pyarrow.parquet as pq

    from galaxiesml.dataset import cube_numpy

    table = pq.read_table(sorted(out.glob("galaxies/*/part-*.parquet")), columns=["object_id", "split", "filters", "image", "variance"])
    table = table.sort_by("object_id")
    return table, cube_numpy(table.column("image")), cube_numpy(table.column("variance"))


def test_a_build_from_the_mirror_is_the_build_from_the_service(both_builds):
    root, mirror, service = both_builds
    assert mirror["funnel"]["failed"] == service["funnel"]["failed"] == 0
    assert mirror["funnel"]["kept_by_split"] == service["funnel"]["kept_by_split"] and mirror["funnel"]["kept"] > 40
    a, images_a, var_a = _galaxies(root / "from_mirror")
    b, images_b, var_b = _galaxies(root / "from_service")
    for column in ("object_id", "split", "filters"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist()
    assert any("HSC-R2" in f or "HSC-I2" in f for f in a.column("filters").to_pylist())  # the fallback filters
    # the same sky pixels (a patch and a cutout are separate GalSim renderings: equal to ~1e-4,
    # where the noise is ~1e-1 and a pixel shifted would differ by that)
    both = np.isfinite(var_a) & np.isfinite(var_b) & (images_a != 0) & (images_b != 0)
    assert both.mean() > 0.75  # ~119 x 119 of the 127 x 127 grid, less what tract edges trim
    np.testing.assert_allclose(np.where(both, images_a, 0), np.where(both, images_b, 0), rtol=0, atol=1e-4)
    # where one has data and the other not: the stand-in trims a cutout at a side whose neighbouring
    # patch was observed in the other filter (HSC-R2 / HSC-I2); the mirror's file keeps its border
    assert np.mean((images_a != 0) != (images_b != 0)) < 0.001


def test_the_service_cutting_from_the_mirror_gives_the_same_dataset_to_the_pixel(both_builds):
    """The real service cuts from the release's files too: the stand-in serving the mirror and the
    build reading the mirror must agree exactly (same kept galaxies, splits, pixels, morphology)."""
    import pyarrow.parquet as pq

    root, _, _ = both_builds
    a, images_a, var_a = _galaxies(root / "from_mirror")
    b, images_b, var_b = _galaxies(root / "from_service_of_mirror")
    assert a.column("object_id").to_pylist() == b.column("object_id").to_pylist() and a.num_rows > 40
    assert a.column("split").to_pylist() == b.column("split").to_pylist()
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(var_a, var_b)
    columns = ["object_id", "i_isophotal_area", "r_half_light_radius", "z_major_axis", "g_total_galaxies"]
    read = lambda out: pq.read_table(sorted(out.glob("galaxies/*/part-*.parquet")), columns=columns).sort_by("object_id")
    mine, theirs = read(root / "from_mirror"), read(root / "from_service_of_mirror")
    for column in columns:  # NaN where a band has no detection, in both
        np.testing.assert_array_equal(mine.column(column).to_numpy(), theirs.column(column).to_numpy())


def test_a_patch_file_missing_from_the_mirror_fails_its_galaxies_with_the_reason(both_builds, tmp_path):
    import pyarrow.parquet as pq

    root, mirror, _ = both_builds
    gone = sorted((root / "mirror").glob("deepCoadd-results/HSC-G/*/*/calexp-*.fits"))[0]
    partial = tmp_path / "mirror"
    import shutil

    shutil.copytree(root / "mirror", partial)
    (partial / gone.relative_to(root / "mirror")).unlink()
    summary = build(tmp_path / "out", root / "input" / "catalog.csv", "--cutout_source", "coadd", "--coadd_root", str(partial))
    f = summary["funnel"]
    lost = f["failed_by_stage"]["cutout"]["no_patch_file"]
    assert lost > 0 and f["kept"] == mirror["funnel"]["kept"] - lost
    failed = pq.read_table(sorted((tmp_path / "out").glob("catalog/failed-*.parquet"))).to_pylist()
    assert all(r["reason"] == "no_patch_file" and gone.name in r["detail"] for r in failed)


def _crowded_group(mirror_rows, key=lambda row: True):
    """The group key and catalog rows of the patch that holds the most of `mirror_rows`."""
    by_patch: dict = {}
    for row in mirror_rows:
        if key(row):
            by_patch.setdefault(patch_of(row["skymap_id"]), []).append(row)
    (tract, px, py), members = max(by_patch.items(), key=lambda kv: len(kv[1]))
    return (tract, px, py), [{**r, "source": "catalog.csv", "line": k + 2, "specz_name": f"S{k}"} for k, r in enumerate(members)]


def test_a_file_cut_short_fails_each_of_its_galaxies_once_with_the_reason(mirror, tmp_path):
    """A patch file that ends inside its image: every member of the group gets one
    unreadable_patch_file record, none an image as well."""
    import shutil

    from apache_beam.pvalue import TaggedOutput

    from transforms.cut_from_coadds import _CutPatch
    from transforms.fetch_cutouts import CutoutConfig

    sky, root, files, truth, galaxies = mirror
    in_truth = {t["object_id"] for t in truth}
    (tract, px, py), members = _crowded_group(galaxies.values(), lambda r: r["object_id"] in in_truth)
    copy = tmp_path / "mirror"
    shutil.copytree(root, copy)
    path = PatchKey("HSC-G", tract, px, py).path(str(copy))  # g: the first band a galaxy is cut in
    with open(path, "r+b") as f:
        image = PatchFile(f)._planes[1]
        f.truncate(image.offset + 10 * image.shape[1] * image.dtype.itemsize)  # ten rows of the image left
    out = list(_CutPatch(CutoutConfig(coadd_root=str(copy))).process((f"{tract}|{px}|{py}|0", members)))
    assert all(isinstance(o, TaggedOutput) for o in out)
    assert sorted(o.value["object_id"] for o in out) == sorted(r["object_id"] for r in members)
    assert all(o.value["reason"] == "unreadable_patch_file" and path in o.value["detail"] for o in out), [o.value for o in out]


def test_a_crowded_group_is_cut_a_chunk_at_a_time_with_the_same_records(both_builds, monkeypatch):
    """A group holds one chunk's stamps at a time: a chunk's galaxies go on before the next chunk
    is read, each member comes out once, and the records do not depend on the chunk size."""
    import pyarrow.parquet as pq

    import transforms.cut_from_coadds as cut
    from transforms.fetch_cutouts import CutoutConfig

    root, _, _ = both_builds
    rows = pq.read_table(sorted((root / "from_mirror").glob("catalog/kept-*.parquet"))).to_pylist()
    (tract, px, py), members = _crowded_group(rows)
    assert len(members) >= 5
    config = CutoutConfig(coadd_root=str(root / "mirror"), planes=("image", "mask", "variance"))
    calls: list[int] = []
    real = PatchFile.stamps
    monkeypatch.setattr(PatchFile, "stamps", lambda self, boxes: calls.append(len(boxes)) or real(self, boxes))

    def records(chunk):
        monkeypatch.setattr(cut, "CHUNK", chunk)
        calls.clear()
        out, calls_before = [], []
        for record in cut._CutPatch(config).process((f"{tract}|{px}|{py}|0", members)):
            out.append(record)
            calls_before.append(len(calls))
        return out, calls_before

    whole, _ = records(1000)
    assert len(calls) == 5 and calls[0] == len(members)  # one read of each band's file for the group
    chunked, calls_before = records(2)
    assert max(calls) <= 2 and len(calls) == 5 * -(-len(members) // 2)
    assert calls_before[0] == 5  # the first galaxy went on after its chunk's 5 bands, before any other
    assert [r["row"]["object_id"] for r in chunked] == [r["row"]["object_id"] for r in whole]
    assert sorted(r["row"]["object_id"] for r in whole) == sorted(m["object_id"] for m in members)
    for a, b in zip(whole, chunked):
        assert a["filters"] == b["filters"]
        for plane in ("image", "flags", "hsc_mask", "variance"):
            np.testing.assert_array_equal(a[plane], b[plane])


def test_a_group_sends_each_galaxy_down_its_documented_path(both_builds, tmp_path, monkeypatch):
    """In one group: a galaxy at the file's edge comes out trimmed there and padded; one that is not
    on the group's patch fails off_patch at g, the first band looked at; with the z file gone from
    the mirror, every other galaxy fails no_patch_file naming it."""
    import shutil

    import pyarrow.parquet as pq
    from apache_beam.pvalue import TaggedOutput

    from galaxiesml.cutouts import PADDED
    from transforms.cut_from_coadds import _CutPatch
    from transforms.fetch_cutouts import CutoutConfig

    root, _, _ = both_builds
    rows = pq.read_table(sorted((root / "from_mirror").glob("catalog/kept-*.parquet"))).to_pylist()
    (tract, px, py), members = _crowded_group(rows)
    far = next(r for r in rows if max(abs(a - b) for a, b in zip(patch_of(r["skymap_id"])[1:], (px, py))) >= 2)
    with open(PatchKey("HSC-G", tract, px, py).path(str(root / "mirror")), "rb") as f:
        patch = PatchFile(f)
        ny, nx = patch.shape
        ra, dec = patch.wcs.pixel_to_world_values(3.0, ny / 2)  # 3 px from the file's left edge
    edge = {**members[0], "object_id": 1, "ra": float(ra), "dec": float(dec)}
    off = {**members[0], "object_id": 2, "ra": far["ra"], "dec": far["dec"]}
    group = (f"{tract}|{px}|{py}|0", [edge, off])

    looked_for = []
    exists = FileSystems.exists
    monkeypatch.setattr(FileSystems, "exists", lambda path: looked_for.append(path) or exists(path))
    out = list(_CutPatch(CutoutConfig(coadd_root=str(root / "mirror"))).process(group))
    assert not [p for p in looked_for if Path(p).exists()]  # a file that opens is not looked for first (a request on gs://)
    (record,) = [o for o in out if not isinstance(o, TaggedOutput)]
    (failed,) = [o.value for o in out if isinstance(o, TaggedOutput)]
    assert record["row"]["object_id"] == 1 and failed["object_id"] == 2
    assert failed["reason"] == "off_patch" and failed["detail"].startswith("g band:")
    half = cutout_pixels(CutoutConfig().half_width) // 2
    columns = np.arange(record["flags"].shape[-1])
    padded = (record["flags"][:, 63, :] & PADDED).astype(bool)  # the row through the galaxy's pixel
    assert np.array_equal(padded[0], (columns < 63 - 3) | (columns > 63 + half))  # past the file, past the box
    assert np.all(record["image"][:, 63, : 63 - 3] == 0) and np.all(record["image"][:, 63, 63 - 3 : 63 + half] != 0)

    partial = tmp_path / "mirror"
    shutil.copytree(root / "mirror", partial)
    gone = PatchKey("HSC-Z", tract, px, py).path(str(partial))
    Path(gone).unlink()
    out = list(_CutPatch(CutoutConfig(coadd_root=str(partial))).process(group))
    reasons = {o.value["object_id"]: (o.value["reason"], o.value["detail"]) for o in out}
    assert len(out) == 2 and reasons[2][0] == "off_patch"
    assert reasons[1][0] == "no_patch_file" and reasons[1][1] == f"z band: {gone} is not in the mirror"


def test_a_row_whose_skymap_id_names_no_patch_fails_before_any_grouping():
    import pyarrow as pa
    from apache_beam.pvalue import TaggedOutput

    from transforms.cut_from_coadds import rows_by_patch

    row = {"object_id": 7, "ra": 150.0, "dec": 2.0, "skymap_id": 0, "source": "c.csv", "line": 2, "specz_name": "S"}
    table = pa.Table.from_pylist([row, {**row, "object_id": 9, "skymap_id": 94700101}])
    failed, keyed = list(rows_by_patch(table))
    assert isinstance(failed, TaggedOutput) and failed.value["reason"] == "no_patch" and failed.value["object_id"] == 7
    assert keyed == ("9470|1|1", {**row, "object_id": 9, "skymap_id": 94700101})


def test_a_sparse_patch_is_one_group_and_a_crowded_one_is_split_up_to_the_limit():
    """Each group opens its patch's five files: a patch is split only where it holds more than
    GROUP_GALAXIES galaxies, into one group per GROUP_GALAXIES, at most PATCH_BUCKETS."""
    from transforms.cut_from_coadds import GROUP_GALAXIES, PATCH_BUCKETS, group_key

    groups = lambda n: {group_key("9813|4|5", oid, n) for oid in range(1000, 1000 + n)}  # noqa: E731
    assert groups(1) == groups(GROUP_GALAXIES) == {"9813|4|5|0"}
    assert groups(GROUP_GALAXIES + 1) == {"9813|4|5|0", "9813|4|5|1"}
    assert len(groups(3000)) == PATCH_BUCKETS
