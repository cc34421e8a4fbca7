"""galaxiesml.morphology: columns, edge cases, Sersic accuracy, real HSC pixels, the command."""
from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

import numpy as np
import pytest
from astropy.io import fits
from scipy import special

from galaxiesml import morphology as M
from galaxiesml.schema import BANDS
from tests.conftest import REAL_HSC
from tests.synthetic_cutouts import psf_image, render_cutout, render_set

FLOAT_COLUMNS = M.MEASUREMENT_COLUMNS


def assert_well_formed(row: dict, *, fit_sersic: bool = True) -> None:
    """Every column present; every NaN explained by a flag; flags are bools."""
    assert set(row) == set(M.BAND_COLUMNS)
    for c in M.FLAG_COLUMNS:
        assert isinstance(row[c], bool), c
    if row["measurement_error"]:
        assert all(math.isnan(row[c]) for c in FLOAT_COLUMNS)
        return
    counts = [row[c] for c in ("total_galaxies", "central_image_pop_15px_rad", "central_image_pop_10px_rad", "central_image_pop_5px_rad")]
    assert all(float(v).is_integer() for v in counts)
    assert counts[0] >= counts[1] >= counts[2] >= counts[3] >= 0
    if row["no_detection"]:
        assert counts == [0, 0, 0, 0]
        assert all(math.isnan(row[c]) for c in FLOAT_COLUMNS if c not in ("total_galaxies",) and not c.startswith("central"))
        return
    assert counts[0] >= 1
    expected = [c for c in FLOAT_COLUMNS if fit_sersic or c != "sersic_index"]
    assert all(math.isfinite(row[c]) for c in expected), row
    assert 0.0 <= row["ellipticity"] < 1.0
    assert row["major_axis"] >= row["minor_axis"] > 0
    assert -90.0 <= row["pos_angle"] <= 90.0
    if fit_sersic:
        assert M.SERSIC_N_BOUNDS[0] - 1e-9 <= row["sersic_index"] <= M.SERSIC_N_BOUNDS[1] + 1e-9


# --- columns -------------------------------------------------------------------------------------------
def test_column_constants():
    assert len(M.MEASUREMENT_COLUMNS) == 13 and len(M.FLAG_COLUMNS) == 5
    assert len(M.MORPHOLOGY_COLUMNS) == 5 * 18
    assert M.MORPHOLOGY_COLUMNS[0] == "g_ellipticity" and M.MORPHOLOGY_COLUMNS[-1] == "y_measurement_error"
    assert set(M.COLUMN_DTYPES) == set(M.BAND_COLUMNS)


# --- ordinary measurement ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cutouts():
    return render_set(11, 6)


def test_measure_band_on_synthetic_cutouts(cutouts):
    for c in cutouts:
        row = M.measure_band(c.image, psf_image())
        assert_well_formed(row)
        assert not row["no_detection"] and not row["measurement_error"]
        assert row["total_galaxies"] >= 1
        assert row["central_image_pop_5px_rad"] >= 1  # the central galaxy itself


def test_byte_order_and_dtype_do_not_matter(cutouts):
    img = cutouts[0].image
    native = M.measure_band(img, None, fit_sersic=False)
    big = M.measure_band(img.astype(">f4"), None, fit_sersic=False)
    f64 = M.measure_band(np.asfortranarray(img.astype(">f8")), None, fit_sersic=False)
    for c in FLOAT_COLUMNS:
        if c == "sersic_index":
            continue
        assert big[c] == native[c], c
        assert f64[c] == pytest.approx(native[c], rel=1e-4, abs=1e-4), c


def test_no_sersic_leaves_it_nan_without_failure_flag(cutouts):
    row = M.measure_band(cutouts[1].image, None, fit_sersic=False)
    assert math.isnan(row["sersic_index"]) and not row["sersic_failed"]
    assert_well_formed(row, fit_sersic=False)


def test_neighbour_counts_are_circles_not_diagonals():
    """Two point sources 7 px from the centre along x (not on a diagonal) count within 10 px."""
    rng = np.random.default_rng(0)
    img = rng.normal(0, 1, (127, 127))
    yy, xx = np.mgrid[:127, :127]
    for x0, y0 in ((63, 63), (70, 63), (63, 51)):
        img += 200 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.8**2))
    row = M.measure_band(img, None, fit_sersic=False)
    assert (row["total_galaxies"], row["central_image_pop_15px_rad"], row["central_image_pop_10px_rad"], row["central_image_pop_5px_rad"]) == (3, 3, 2, 1)


# --- edge cases: flagged rows, never an exception ------------------------------------------------------
def _star(amplitude: float, noise: float = 1.0, seed: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[:127, :127]
    rng = np.random.default_rng(seed)
    return amplitude * np.exp(-((xx - 63) ** 2 + (yy - 63) ** 2) / (2 * 1.8**2)) + rng.normal(0, noise, (127, 127))


@pytest.mark.parametrize(
    "name, image, expect",
    [
        ("nan", np.full((127, 127), np.nan, dtype=np.float32), "measurement_error"),
        ("inf", np.full((127, 127), np.inf), "measurement_error"),
        ("zeros", np.zeros((127, 127), dtype=np.float32), "no_detection"),
        ("constant", np.full((127, 127), 3.5), "no_detection"),
        ("saturated", np.full((127, 127), 65535.0, dtype=np.float32), "no_detection"),
        ("noise only", np.random.default_rng(3).normal(0, 1, (127, 127)) * 1e-3, "no_detection"),
        ("clipped star", np.minimum(_star(1e6), 5e4), None),
        ("bright star", _star(1e5), None),
        ("nan border", np.pad(_star(300)[20:-20, 20:-20], 20, constant_values=np.nan), None),
    ],
)
def test_edge_cases_give_flagged_rows(name, image, expect):
    row = M.measure_band(image, None)
    assert_well_formed(row)
    if expect is not None:
        assert row[expect], (name, row)
    else:
        assert not row["measurement_error"] and not row["no_detection"], (name, row)
        assert row["central_image_pop_5px_rad"] >= 1


def test_no_detection_when_only_noise():
    # pure noise at these seeds gives no 5-pixel 3-sigma detection
    found = [M.measure_band(np.random.default_rng(s).normal(0, 1, (127, 127)), None) for s in range(5)]
    empty = [r for r in found if r["total_galaxies"] == 0]
    assert empty and all(r["no_detection"] and math.isnan(r["major_axis"]) for r in empty)


def test_star_is_round_and_compact():
    row = M.measure_band(_star(1e4), None)
    assert row["ellipticity"] < 0.05
    assert row["half_light_radius"] == pytest.approx(1.8 * 1.1774, rel=0.1)
    assert row["sersic_index"] < 1.0 or row["sersic_at_bound"]


def test_measure_galaxy_isolates_a_failing_band(cutouts):
    cube = np.stack([c.image for c in cutouts[:5]])
    cube[2] = np.nan
    out = M.measure_galaxy(cube, [psf_image()] * 5)
    assert list(out) == list(M.MORPHOLOGY_COLUMNS)
    assert out["i_measurement_error"] and math.isnan(out["i_major_axis"])
    for b in "grzy":
        assert not out[f"{b}_measurement_error"]
        assert math.isfinite(out[f"{b}_sersic_index"])


def test_measure_galaxy_rejects_a_cube_of_the_wrong_shape():
    with pytest.raises(ValueError):
        M.measure_galaxy(np.zeros((4, 127, 127)), None)


# --- Sersic index accuracy -----------------------------------------------------------------------------
def test_sersic_index_recovers_truth_at_snr_50():
    """n in {0.5, 1, 2, 4}, S/N 50 (FLUX_AUTO/FLUXERR_AUTO), right PSF, 0-2 neighbours: 30 each."""
    rng = np.random.default_rng(99)
    psf = psf_image()
    logs = {}
    for n in (0.5, 1.0, 2.0, 4.0):
        est = []
        for _ in range(30):
            c = render_cutout(rng, n=n, snr=50.0, neighbours=(0, 2), hlr_arcsec=(0.3, 1.0))
            row = M.measure_band(c.image, psf)
            assert not row["measurement_error"] and not row["no_detection"]
            est.append(row["sersic_index"])
        logs[n] = np.log10(np.array(est) / n)
    pooled = np.concatenate(list(logs.values()))
    bias = float(np.median(pooled))
    nmad = float(1.4826 * np.median(np.abs(pooled - bias)))
    assert abs(bias) <= 0.03, bias
    assert nmad <= 0.12, nmad
    for n, v in logs.items():
        assert abs(np.median(v)) <= 0.06, (n, np.median(v))


def test_default_psf_is_a_0p7_arcsec_moffat():
    p = M.default_psf()
    assert p.shape == (2 * M.MAX_PSF_HALF + 1,) * 2
    assert p.sum() == pytest.approx(1.0, abs=0.02)
    fwhm_px = 2 * M.SersicFitter._radii(p / p.sum())[0]  # a Moffat's FWHM is close to 2 r_half
    assert 3.0 < fwhm_px < 6.0


# --- real HSC pixels ------------------------------------------------------------------------------------
def test_real_hsc_cutout_against_its_sep_catalogue():
    data = np.load(REAL_HSC / "hsc_cosmos.npz")
    images, psfs, cat = data["images"], data["psfs"], data["catalog"]
    bright = cat[int(np.argmax(cat["flux"]))]
    # pad (with no-data NaNs) so that the catalogue's brightest source sits at the centre (63, 63)
    ox, oy = 63 - int(round(bright["x"])), 63 - int(round(bright["y"]))
    h, w = images.shape[1:]
    cube = np.full((5, 127, 127), np.nan, dtype=np.float32)
    cube[:, oy : oy + h, ox : ox + w] = images
    out = M.measure_galaxy(cube, list(psfs))
    for b in "grizy":
        row = {c: out[f"{b}_{c}"] for c in M.BAND_COLUMNS}
        assert_well_formed(row)
        assert not row["measurement_error"] and not row["no_detection"], b
        assert 1 <= row["total_galaxies"] <= 2 * len(cat)
    for b in "riz":  # the deep bands see the galaxy much as the stored catalogue does
        a, bb = out[f"{b}_major_axis"], out[f"{b}_minor_axis"]
        assert 0.5 < a / bright["a"] < 2.0 and 0.5 < bb / bright["b"] < 2.0, (b, a, bb)
        assert out[f"{b}_total_galaxies"] >= 3
        assert out[f"{b}_central_image_pop_5px_rad"] == 1
        assert 0.2 <= out[f"{b}_sersic_index"] <= 8.0


# --- the command ------------------------------------------------------------------------------------------
def _run(argv: list[str]) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert M.main(argv) == 0
    return buf.getvalue()


def test_command_reads_hdu1_cutouts_and_writes_json(tmp_path, cutouts):
    path = tmp_path / "cutout.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cutouts[0].image.astype(">f4"))]).writeto(path)
    rows = json.loads(_run([str(path), "--format", "json", "--no-sersic"]))
    assert len(rows) == 1 and rows[0]["file"] == str(path)
    assert rows[0]["sersic_index"] is None and rows[0]["total_galaxies"] >= 1
    assert rows[0]["major_axis"] == pytest.approx(M.measure_band(cutouts[0].image, None, fit_sersic=False)["major_axis"])


def test_command_measures_a_primary_hdu_cube_with_its_psfs_as_csv():
    out = _run([str(REAL_HSC / "Cut_HSC.fits"), "--psf", str(REAL_HSC / "PSF_HSC.fits")])
    lines = out.strip().splitlines()
    assert lines[0].split(",") == ["file", "plane", *M.BAND_COLUMNS]
    assert len(lines) == 6
    err = lines[0].split(",").index("measurement_error")
    assert all(line.split(",")[err] == "0" for line in lines[1:])


def test_a_single_band_file_takes_its_own_psf_from_a_cube_or_errors(tmp_path, capsys):
    """The z band of the real stamp measured with the g PSF (plane 0, as a cube used to be read)
    gave n = 0.893, with its own 0.772."""
    with fits.open(REAL_HSC / "Cut_HSC.fits") as hdul:
        cube = hdul[0].data.astype(np.float32)
        header = hdul[0].header.copy()
    with fits.open(REAL_HSC / "PSF_HSC.fits") as hdul:
        psfs = hdul[0].data.astype(np.float64)
    z = BANDS.index("z")
    for name, card in (("z.fits", "HSC-Z"), ("z_letter.fits", "z")):
        fits.HDUList([fits.PrimaryHDU(header=fits.Header([("FILTER", card)])), fits.ImageHDU(cube[z])]).writeto(tmp_path / name)
        (row,) = json.loads(_run([str(tmp_path / name), "--psf", str(REAL_HSC / "PSF_HSC.fits"), "--format", "json"]))
        assert row["sersic_index"] == pytest.approx(M.measure_band(cube[z], psfs[z])["sersic_index"])
        assert row["sersic_index"] != pytest.approx(M.measure_band(cube[z], psfs[0])["sersic_index"])
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube[z])]).writeto(tmp_path / "unknown.fits")
    assert M.main([str(tmp_path / "unknown.fits"), "--psf", str(REAL_HSC / "PSF_HSC.fits")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no FILTER card says which band" in err


# --- the Fourier-space Sersic model ---------------------------------------------------------------------
def _transform_at(n: float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T, dT = M.sersic_transform(n)
    return np.interp(np.log(x), M._LN_K, T), np.interp(np.log(x), M._LN_K, dT)


def test_sersic_transform_matches_the_closed_forms_and_its_n_derivative():
    x = np.array([1e-3, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0])
    gauss, _ = _transform_at(0.5, x)  # n = 0.5 is a Gaussian of variance r_e^2 / (2 ln 2)
    np.testing.assert_allclose(gauss, np.exp(-(x**2) / (4 * np.log(2))), atol=3e-4)
    b1 = float(special.gammaincinv(2.0, 0.5))
    expo, _ = _transform_at(1.0, x)  # n = 1: (1 + (k r_e / b)^2)^(-3/2)
    np.testing.assert_allclose(expo, (1 + (x / b1) ** 2) ** -1.5, atol=3e-4)
    for n in (0.3, 1.0, 4.0, 7.5):
        _, d = _transform_at(n, x)
        up, _ = _transform_at(n * 1.001, x)
        down, _ = _transform_at(n / 1.001, x)
        np.testing.assert_allclose(d, (up - down) / (2 * np.log(1.001)), atol=2e-3)


def test_sersic_model_is_galsims_pixel_integrated_convolution_with_analytic_derivatives():
    """The model on a 64 px grid against GalSim's rendering of the same Sersic through the same
    Moffat (drawn with the pixel), and each derivative plane against central differences."""
    import galsim

    from tests.synthetic_cutouts import moffat_psf

    psf = psf_image(size=63)
    fitter = M.SersicFitter(psf / psf.sum())
    for p in ([32.3, 31.7, np.log(1.5), np.log(4.0), 0.1, 0.1], [32.0, 32.2, np.log(2.5), np.log(1.0), 0.0, 0.3],
              [31.6, 32.4, np.log(2.0), np.log(0.6), -0.3, 0.2]):
        p = np.array(p)
        e = np.hypot(p[4], p[5])
        gal = galsim.Sersic(n=np.exp(p[3]), half_light_radius=np.exp(p[2]) * 0.168).shear(
            q=(1 - e) / (1 + e), beta=0.5 * np.arctan2(p[5], p[4]) * galsim.radians)
        truth = galsim.Convolve(gal, moffat_psf()).drawImage(nx=64, ny=64, scale=0.168, offset=(p[0] - 31.5, p[1] - 31.5)).array
        stack = fitter.model(p, 0, 0, (64, 64))
        assert np.abs(stack[0] - truth).max() <= 2e-3 * truth.max()
        for j in range(6):
            d = np.zeros(6)
            d[j] = 1e-3
            numeric = (fitter.model(p + d, 0, 0, (64, 64))[0].astype(float) - fitter.model(p - d, 0, 0, (64, 64))[0]) / 2e-3
            assert np.abs(stack[j + 1] - numeric).max() <= 0.02 * np.abs(numeric).max(), j


def test_n4_wings_do_not_bias_the_sky_and_the_index():
    """An n = 4 galaxy keeps ~15% of its light beyond 5 r_e, in the pixels the sky is read from;
    read naively, that sky is too high and n comes out low (-0.03 dex at S/N 100). At S/N 300 the
    median of 24 galaxies must be within 0.015 dex of the truth."""
    rng = np.random.default_rng(4)
    psf = psf_image()
    logs = []
    for _ in range(24):
        c = render_cutout(rng, n=4.0, snr=300.0, neighbours=(0, 1), hlr_arcsec=(0.4, 1.0))
        logs.append(np.log10(M.measure_band(c.image, psf)["sersic_index"] / 4.0))
    assert abs(float(np.median(logs))) <= 0.015, np.median(logs)


def test_interpolated_transform_is_the_exact_one_between_the_tables_nodes():
    for n in (0.2, 0.37, 1.0, 2.718, 4.4, 7.9, 8.0):
        exact, d_exact = M.sersic_transform(n)
        value, slope = M.interpolated_transform(np.log(n))
        assert np.abs(value - exact).max() <= 1e-6, n
        assert np.abs(slope - d_exact).max() <= 3e-3 * np.abs(d_exact).max(), n  # 1.9e-3 at worst on a dense scan


def test_median_is_numpys_for_odd_and_even_counts_in_both_precisions():
    rng = np.random.default_rng(8)
    for n in (1, 2, 3, 10, 11, 9621, 9622):
        for dtype in (np.float32, np.float64):
            values = (rng.standard_normal(n) * rng.uniform(0.1, 1000)).astype(dtype)
            assert M._median(values) == float(np.median(values)), (n, dtype)


def test_a_pixel_stack_the_size_of_the_image_finds_what_ses_300000_finds_and_is_given_back():
    """_extract sizes sep's pixel stack to the image (linking SE's 300,000 entries cost as much as the
    extraction): on an image nearly all above threshold, where the stack fills to the image's size,
    the catalogue and segmentation map are those of SE's stack, and the process-wide setting is restored."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:127, :127]
    image = 50.0 * np.exp(-((xx - 63.0) ** 2 + (yy - 60.0) ** 2) / (2 * 60.0**2)) + rng.normal(0, 1, (127, 127))
    image[10:20, 100:110] += 30.0  # a second source, for the deblender
    sub = (image - 0.0).astype(np.float32)
    before = M.sep.get_extract_pixstack()
    objects, segmap = M._extract(sub, 1.0)
    assert M.sep.get_extract_pixstack() == before
    assert np.count_nonzero(segmap) == segmap.size  # every pixel above threshold: the stack is full
    M.sep.set_extract_pixstack(M.MEMORY_PIXSTACK)
    try:
        ref_objects, ref_segmap = M.sep.extract(
            sub, M.DETECT_THRESH, err=1.0, minarea=M.DETECT_MINAREA, filter_kernel=M.SE_FILTER, filter_type="conv",
            deblend_nthresh=M.DEBLEND_NTHRESH, deblend_cont=M.DEBLEND_MINCONT, clean=True, clean_param=M.CLEAN_PARAM,
            segmentation_map=True,
        )
    finally:
        M.sep.set_extract_pixstack(before)
    assert np.array_equal(segmap, ref_segmap)
    assert objects.tobytes() == ref_objects.tobytes()
