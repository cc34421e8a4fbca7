"""The synthetic sky: known galaxies render with the stated flux and size, pixels are
deterministic, coverage gaps behave like das_cutout's, and the catalog points at the sky."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from galaxiesml.hsc.format import FILTERS, MASK_PLANES, PIXEL_SCALE
from galaxiesml.schema import BANDS
from galaxiesml.sky import (
    Sky,
    SkyLayout,
    galaxy_truth,
    mag_to_flux,
    make_layout,
    make_sky,
    noise_sigma,
    write_sky,
)
from galaxiesml.synthetic_catalog import WIDE_DEPTH, Region, make_galaxies
from tests.conftest import REAL_HSC

REAL_PSF = REAL_HSC / "PSF_HSC.fits"
RA0, DEC0 = 150.0, 2.0


def _layout(**kw) -> SkyLayout:
    base = dict(ra0=RA0, dec0=DEC0, nx=2000, ny=2000, patch_px=1000, tract=9813)
    return SkyLayout(**{**base, **kw})


def _sources(rows: list[dict]) -> pa.Table:
    """A truth table from dicts; unspecified fields get defaults (a round n=1 galaxy, mag 20)."""
    default = dict(kind="galaxy", object_id=1, redshift=0.5, sersic_n=1.0, half_light_radius=1.0,
                   axis_ratio=1.0, position_angle=0.0, **{f"mag_{b}": 20.0 for b in BANDS})
    rows = [{**default, **r} for r in rows]
    return pa.table({k: [r[k] for r in rows] for k in ["ra", "dec", *default]})


def _at(layout: SkyLayout, x: float, y: float) -> tuple[float, float]:
    ra, dec = layout.wcs.wcs_pix2world([x], [y], 0)
    return float(ra[0]), float(dec[0])


def _half_light_radius(image: np.ndarray) -> float:
    """Radius (pixels) of the circle around the light centroid holding half the flux."""
    yy, xx = np.indices(image.shape)
    total = image.sum()
    cx, cy = (image * xx).sum() / total, (image * yy).sum() / total
    r = np.hypot(xx - cx, yy - cy).ravel()
    order = np.argsort(r)
    cum = np.cumsum(image.ravel()[order])
    return float(np.interp(0.5 * total, cum, r[order]))


def test_known_galaxy_flux_and_half_light_radius_match_truth():
    """A round Sersic galaxy (n=1, hlr 2", i = 19): the noise-free stamp holds the truth flux to
    0.5%, and its half-light radius matches the truth added in quadrature to the PSF's (measured
    from a star in the same sky) to 3%. With noise, the flux is within 5 sigma of the noise."""
    layout = _layout()
    ra, dec = _at(layout, 500.0, 500.0)
    ra_s, dec_s = _at(layout, 1500.0, 1500.0)
    sky = Sky(_sources([dict(ra=ra, dec=dec, half_light_radius=2.0, mag_i=19.0),
                        dict(ra=ra_s, dec=dec_s, kind="star", object_id=None, sersic_n=math.nan,
                             half_light_radius=0.0, mag_i=19.0)]), layout, seed=1)
    truth_flux = mag_to_flux(19.0)
    gal = sky.cutout("HSC-I", ra, dec, 20.0, noise=False)
    star = sky.cutout("HSC-I", ra_s, dec_s, 20.0, noise=False)
    assert gal is not None and star is not None
    assert gal.image.sum() == pytest.approx(truth_flux, rel=5e-3)
    assert star.image.sum() == pytest.approx(truth_flux, rel=5e-3)
    psf_hlr = _half_light_radius(star.image) * PIXEL_SCALE
    measured = _half_light_radius(gal.image) * PIXEL_SCALE
    assert 0.2 < psf_hlr < 0.5
    assert measured == pytest.approx(math.hypot(2.0, psf_hlr), rel=0.03)
    noisy = sky.cutout("HSC-I", ra, dec, 20.0)
    assert abs(noisy.image.sum() - truth_flux) < 5 * sky.sigma["i"] * math.sqrt(noisy.image.size)


def test_ellipse_orientation_and_size_shrinking_with_redshift():
    layout = _layout()
    ra, dec = _at(layout, 700.0, 700.0)
    sky = Sky(_sources([dict(ra=ra, dec=dec, axis_ratio=0.4, position_angle=30.0, half_light_radius=1.5)]), layout)
    img = sky.cutout("HSC-I", ra, dec, 10.0, noise=False).image
    yy, xx = np.indices(img.shape)
    f = img.sum()
    cx, cy = (img * xx).sum() / f, (img * yy).sum() / f
    qxx, qyy = (img * (xx - cx) ** 2).sum() / f, (img * (yy - cy) ** 2).sum() / f
    qxy = (img * (xx - cx) * (yy - cy)).sum() / f
    angle = 0.5 * math.degrees(math.atan2(2 * qxy, qxx - qyy))
    assert angle == pytest.approx(30.0, abs=2.0)
    lam = np.linalg.eigvalsh([[qxx, qxy], [qxy, qyy]])
    assert math.sqrt(lam[0] / lam[1]) < 0.6

    galaxies = make_galaxies(3000, seed=3, region=Region(149.9, 150.1, 2.0, 2.2))
    truth = galaxy_truth(galaxies, seed=3)
    z = truth.column("redshift").to_numpy()
    hlr = truth.column("half_light_radius").to_numpy()
    assert np.median(hlr[z < 0.5]) > 1.5 * np.median(hlr[z > 1.5])
    assert set(np.unique(truth.column("sersic_n").to_numpy())) <= {0.5, 1.0, 1.5, 2.0, 3.0, 4.0}


def test_noise_is_at_wide_depth_deterministic_and_tied_to_the_sky():
    layout = _layout()
    ra, dec = _at(layout, 300.0, 300.0)
    sky = Sky(_sources([dict(ra=ra, dec=dec, mag_i=30.0)]), layout, seed=5)
    a = sky.cutout("HSC-I", ra, dec, 10.584)
    b = sky.cutout("HSC-I", ra, dec, 10.584)
    assert a.image.shape == (127, 127)
    np.testing.assert_array_equal(a.image, b.image)
    # A cutout centred 10 pixels away overlaps the first one and agrees pixel for pixel there.
    ra2, dec2 = _at(layout, 310.0, 296.0)
    c = sky.cutout("HSC-I", ra2, dec2, 10.584)
    dx, dy = c.x0 - a.x0, c.y0 - a.y0
    assert (dx, dy) == (10, -4)
    np.testing.assert_array_equal(a.image[: 127 + dy, dx:], c.image[-dy:, : 127 - dx])
    # Another seed gives other noise; its level is the Wide 5-sigma depth's.
    other = Sky(sky.truth.select(["kind", "object_id", "ra", "dec", "redshift", "sersic_n", "half_light_radius",
                                  "axis_ratio", "position_angle", *[f"mag_{b}" for b in BANDS]]), layout, seed=6)
    assert not np.array_equal(other.cutout("HSC-I", ra, dec, 10.584).image, a.image)
    assert np.std(a.image) == pytest.approx(noise_sigma("i"), rel=0.05)
    point_snr = mag_to_flux(WIDE_DEPTH["i"]) / (noise_sigma("i") * math.sqrt(4 * math.pi) * 0.58 / 2.3548 / 0.168)
    assert point_snr == pytest.approx(5.0)


def test_coverage_gaps_cut_cutouts_short_and_flag_no_data():
    """Patch (1, 0) is empty and patch (1, 1) lacks the r band. A galaxy near the edge shared with
    the empty patch gets a cutout cut short at that edge; one inside the empty patch gets none;
    the r band of a galaxy in (1, 1) is missing; a diagonal gap stays in, flagged NO_DATA."""
    layout = _layout(empty=frozenset({(1, 0)}), band_gaps=frozenset({("r", 1, 1)}))
    spots = {"edge": (990.0, 500.0), "empty": (1500.0, 500.0), "no_r": (1500.0, 1500.0), "corner": (990.0, 1010.0)}
    pos = {k: _at(layout, *xy) for k, xy in spots.items()}
    sky = Sky(_sources([dict(ra=r, dec=d, object_id=i) for i, (r, d) in enumerate(pos.values())]), layout)
    edge = sky.cutout("HSC-G", *pos["edge"], 10.584)
    assert edge.image.shape == (127, 63 + 10)  # 63 pixels left of the centre, 9 right of it, and the centre
    assert sky.cutout("HSC-G", *pos["empty"], 10.584) is None
    assert sky.cutout("HSC-R", *pos["no_r"], 10.584) is None
    assert sky.cutout("HSC-G", *pos["no_r"], 10.584) is not None
    corner = sky.cutout("HSC-G", *pos["corner"], 10.584)
    assert corner.image.shape == (127, 127)
    no_data = (corner.mask & (1 << MASK_PLANES["NO_DATA"])) > 0
    assert no_data.sum() == 53 * 54  # the empty patch's part of the stamp: y in [947, 1000), x in [1000, 1054)
    assert np.all(corner.image[no_data] == 0) and np.all(np.isinf(corner.variance[no_data]))
    filters = sky.truth.select([f"filter_{b}" for b in BANDS]).to_pylist()
    assert filters[1] == {f"filter_{b}": "" for b in BANDS}
    assert filters[2]["filter_r"] == "" and filters[2]["filter_g"] == "HSC-G"


def test_cutout_fits_is_laid_out_like_das_cutout():
    layout = _layout()
    ra, dec = _at(layout, 800.0, 800.0)
    sky = Sky(_sources([dict(ra=ra, dec=dec)]), layout)
    data = sky.cutout("HSC-Z", ra, dec, 10.584).fits_bytes(True, True, True)
    with fits.open(__import__("io").BytesIO(data)) as hdul:
        assert len(hdul) == 4 and hdul[0].data is None
        h0 = hdul[0].header
        assert h0["FLUXMAG0"] == pytest.approx(10 ** (0.4 * 27))
        assert h0["FILTER"] == "HSC-Z" and h0["BGVAR"] > 0 and "PSF_ID" in h0 and "BGMEAN" in h0
        assert h0["variance_scale"] == 1.0
        assert [h.header["EXTTYPE"] for h in hdul[1:]] == ["IMAGE", "MASK", "VARIANCE"]
        assert all("EXTNAME" not in h.header for h in hdul[1:])
        assert hdul[1].data.dtype == np.dtype(">f4") and hdul[2].data.dtype == np.dtype(">i4")
        assert hdul[3].data.dtype == np.dtype(">f4")
        assert hdul[2].header["MP_NO_DATA"] == 8 and hdul[2].header["MP_DETECTED"] == 5
        w = WCS(hdul[1].header)
        assert w.wcs.ctype[0] == "RA---TAN"
        np.testing.assert_allclose(proj_plane_pixel_scales(w) * 3600, PIXEL_SCALE, rtol=1e-9)
        centre = w.pixel_to_world_values(63, 63)
        assert centre[0] == pytest.approx(ra, abs=0.1 / 3600) and centre[1] == pytest.approx(dec, abs=0.1 / 3600)
        assert hdul[1].data[60:67, 60:67].max() == hdul[1].data.max()  # the galaxy sits at the centre


def test_real_hsc_psf_renders_with_flux_conserved():
    layout = _layout()
    ra, dec = _at(layout, 600.0, 600.0)
    sky = Sky(_sources([dict(ra=ra, dec=dec, kind="star", sersic_n=math.nan, half_light_radius=0.0)]), layout, psf=REAL_PSF)
    star = sky.cutout("HSC-R", ra, dec, 5.0, noise=False)
    assert star.image.sum() == pytest.approx(mag_to_flux(20.0), rel=0.01)
    assert 0.4 < sky.psf_fwhm["r"] < 1.2


def test_make_sky_catalog_points_at_the_sky(tmp_path):
    sky, rows = make_sky(300, seed=4, patch_px=800, empty_share=0.3)
    truth = sky.truth
    galaxies = truth.filter(pa.compute.equal(truth.column("kind"), "galaxy"))
    assert galaxies.num_rows == 300 and truth.num_rows == 306
    positions = set(zip(galaxies.column("ra").to_pylist(), galaxies.column("dec").to_pylist()))
    assert all(p in positions for p in zip(rows.column("ra").to_pylist(), rows.column("dec").to_pylist()))
    assert rows.num_rows > galaxies.num_rows  # duplicates, as the real export has
    assert set(np.asarray(rows.column("skymap_id").to_numpy()) // 10000) == {sky.layout.tract}
    paths = write_sky(sky, rows, tmp_path)
    assert pq.read_table(paths["truth"]).num_rows == truth.num_rows
    text = paths["catalog"].read_text().splitlines()
    assert text[0].startswith("#") and any(line.startswith("# object_id,") for line in text)
    covered = [f != "" for f in galaxies.column("filter_i").to_pylist()]
    assert 0 < sum(covered) < len(covered)  # some galaxies lie where the sky has no data


def test_write_patches_match_cutouts(tmp_path):
    layout = _layout(nx=600, ny=400, patch_px=300, empty=frozenset({(1, 1)}))
    ra, dec = _at(layout, 150.0, 150.0)
    sky = Sky(_sources([dict(ra=ra, dec=dec)]), layout, seed=2)
    paths = sky.write_patches(tmp_path, bands=("g",))
    assert sorted(p.parent.name for p in paths) == ["0,0", "0,1", "1,0"]
    assert paths[0] == tmp_path / "deepCoadd-results/HSC-G/9813/0,0/calexp-HSC-G-9813-0,0.fits"
    cut = sky.cutout("HSC-G", ra, dec, 5.0)
    with fits.open(paths[0]) as hdul:
        assert hdul[1].data.shape == (300, 300)
        patch = hdul[1].data[cut.y0 : cut.y0 + cut.image.shape[0], cut.x0 : cut.x0 + cut.image.shape[1]]
    np.testing.assert_allclose(patch, cut.image, rtol=1e-6, atol=1e-6)


def test_render_cost_does_not_grow_with_the_sky():
    """100,000 galaxies: a cutout renders only its neighbourhood, found through the grid index."""
    region = Region(149.0, 151.0, 1.0, 3.0)
    layout = make_layout(region, seed=1)
    rng = np.random.default_rng(0)
    n = 100_000
    ra, dec = rng.uniform(149.0, 151.0, n), rng.uniform(1.0, 3.0, n)
    truth = pa.table({"kind": ["galaxy"] * n, "object_id": np.arange(n), "ra": ra, "dec": dec,
                      "redshift": np.full(n, 1.0), "sersic_n": np.full(n, 1.0), "half_light_radius": np.full(n, 0.5),
                      "axis_ratio": np.full(n, 0.8), "position_angle": np.zeros(n),
                      **{f"mag_{b}": np.full(n, 23.0) for b in BANDS}})
    sky = Sky(truth, layout)
    k = int(np.flatnonzero(np.array(sky.truth.column("filter_i").to_pylist()) == FILTERS["i"])[0])
    drawn = []
    profile = sky.profile
    sky.profile = lambda i, band: drawn.append(i) or profile(i, band)  # count what the render draws
    cut = sky.cutout("HSC-I", ra[k], dec[k], 10.584)
    box = (cut.x0, cut.x0 + cut.image.shape[1], cut.y0, cut.y0 + cut.image.shape[0])
    near = sky.sources_near(*box)
    assert k in near and len(near) < 30
    x, y = sky.truth.column("x").to_numpy(), sky.truth.column("y").to_numpy()
    brute = np.flatnonzero((x > box[0] - 20) & (x < box[1] + 19) & (y > box[2] - 20) & (y < box[3] + 19))
    assert set(brute) <= set(near)
    assert k in drawn and len(drawn) <= len(near)  # not the 100,000
