"""Per-band morphology of a GalaxiesML cutout: the paper's 13 Source Extractor columns, measured with sep.

The paper (section 3.4, appendix 10) ran Source Extractor (SE) 2.25 on each 127x127 band image.
This module reproduces those measurements with sep, set up like SE with the paper's configuration
(tests/data/sextractor/morph.sex), and adds a PSF-convolved Sersic fit for the Sersic index.
docs/morphology.md gives every definition and choice in full; in short:

* Background: SE's mesh (BACK_SIZE 64, BACK_FILTERSIZE 3), subtracted; the detection threshold is
  DETECT_THRESH = 3 times the *global* background rms; DETECT_MINAREA 5; filtered with SE's
  gauss_1.5_3x3 kernel ('conv'); DEBLEND_NTHRESH 32, DEBLEND_MINCONT 0.005; CLEAN 1.0.
  ANALYSIS_THRESH = DETECT_THRESH = 3 (the paper prints both 1.5 and 3; section 3.4 says 3).
* The central galaxy is the detection nearest the cutout centre ((63, 63) zero-based for 127x127).
* major_axis, minor_axis, pos_angle = SE's A_IMAGE, B_IMAGE, THETA_IMAGE (second-moment RMS sizes of
  the isophote, degrees counter-clockwise from +x); ellipticity = 1 - B/A.
* isophotal_area = ISOAREA_IMAGE: pixels of the object above ANALYSIS_THRESH x rms.
* peak_surface_brightness = MU_MAX = MAG_ZEROPOINT - 2.5 log10(peak / PIXEL_SCALE^2), with the paper's
  MAG_ZEROPOINT 0 and PIXEL_SCALE 0.17 (so negative; add 27.0 for AB mag/arcsec^2 of HSC coadds).
* half_light_radius = FLUX_RADIUS for PHOT_FLUXFRAC 0.5: the radius holding half of FLUX_AUTO (SE
  normalises to FLUX_AUTO, not the total flux), out to 6 A, on the image with neighbours corrected
  by MASK_TYPE CORRECT (pixels of other detections replaced by the pixel mirrored through the centre).
* petro_rad = PETRO_RADIUS: SE's algorithm (eta = 0.2 on elliptical annuli, x PETRO_FACT 2.0, floor
  3.5), in units of A, as SE reports it.
* total_galaxies = number of detections; central_image_pop_{15,10,5}px_rad = detections whose centre
  lies within (<=) 15/10/5 px of the cutout centre, the central galaxy included.
* sersic_index: a PSF-convolved elliptical Sersic fit (Levenberg-Marquardt), n bounded to [0.2, 8];
  without a PSF a Moffat (FWHM 0.7", beta 3, at 0.168"/px) stands in.

Every value is a float (NaN when missing, counts included so that a failed band is NaN throughout);
the flags say why: no_detection, blended_centre, sersic_at_bound, sersic_failed, measurement_error.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import sep
from scipy import fft as sfft
from scipy import ndimage, special

from galaxiesml.schema import BANDS

# --- the paper's Source Extractor configuration ---------------------------------------------------
DETECT_THRESH = 3.0
ANALYSIS_THRESH = 3.0
DETECT_MINAREA = 5
DEBLEND_NTHRESH = 32
DEBLEND_MINCONT = 0.005
CLEAN_PARAM = 1.0
BACK_SIZE = 64
BACK_FILTERSIZE = 3
PHOT_AUTOPARAMS = (2.5, 3.5)
PHOT_PETROPARAMS = (2.0, 3.5)
PETRO_ETA = 0.2
PHOT_FLUXFRAC = 0.5
MAG_ZEROPOINT = 0.0
PIXEL_SCALE = 0.17
MEMORY_PIXSTACK = 300000
#: SE's KRON_NSIG = PETRO_NSIG = GROWTH_NSIG = 3 * MARGIN_SCALE: analysis range in units of A.
SE_NSIG = 6.0
#: SE's gauss_1.5_3x3.conv (CONV NORM).
SE_FILTER = np.array(
    [[0.109853, 0.300700, 0.109853], [0.300700, 0.823102, 0.300700], [0.109853, 0.300700, 0.109853]],
    dtype=np.float32,
)
NEIGHBOUR_RADII = (15, 10, 5)

# --- Sersic fit ------------------------------------------------------------------------------------
HSC_PIXEL_SCALE = 0.168
DEFAULT_PSF_FWHM_ARCSEC = 0.7
DEFAULT_PSF_BETA = 3.0
SERSIC_N_BOUNDS = (0.2, 8.0)
#: Largest half-size of the fitted stamp (pixels) and of the PSF used in the convolution.
MAX_STAMP_HALF = 30
MAX_PSF_HALF = 12
#: Detections are grown by this many pixels before the residual sky under the fit is taken.
SKY_MASK_GROW = 6

# --- columns ---------------------------------------------------------------------------------------
MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "ellipticity",
    "half_light_radius",
    "isophotal_area",
    "major_axis",
    "minor_axis",
    "peak_surface_brightness",
    "petro_rad",
    "pos_angle",
    "sersic_index",
    "total_galaxies",
    "central_image_pop_15px_rad",
    "central_image_pop_10px_rad",
    "central_image_pop_5px_rad",
)
FLAG_COLUMNS: tuple[str, ...] = (
    "no_detection",
    "blended_centre",
    "sersic_at_bound",
    "sersic_failed",
    "measurement_error",
)
#: Per-band columns, without the band prefix, in output order.
BAND_COLUMNS: tuple[str, ...] = MEASUREMENT_COLUMNS + FLAG_COLUMNS
#: numpy dtype of each per-band column (float64 measurements, NaN when missing; bool flags).
COLUMN_DTYPES: dict[str, type] = {
    **{c: np.float64 for c in MEASUREMENT_COLUMNS},
    **{c: np.bool_ for c in FLAG_COLUMNS},
}


def morphology_columns(bands: Sequence[str] = BANDS) -> tuple[str, ...]:
    """`{band}_{column}` for every band and per-band column, band-major."""
    return tuple(f"{b}_{c}" for b in bands for c in BAND_COLUMNS)


#: Prefixed column names for the five HSC bands (g, r, i, z, y).
MORPHOLOGY_COLUMNS: tuple[str, ...] = morphology_columns()


def _blank_row() -> dict[str, Any]:
    row: dict[str, Any] = {c: math.nan for c in MEASUREMENT_COLUMNS}
    row.update({c: False for c in FLAG_COLUMNS})
    return row


def _error_row() -> dict[str, Any]:
    row = _blank_row()
    row["measurement_error"] = True
    return row


def _native(image: np.ndarray) -> np.ndarray:
    """A native-byte-order, C-contiguous float copy (FITS data are big-endian)."""
    a = np.asarray(image)
    if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        a = a.astype(np.float64)
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="), copy=True))


def _arr(v: float) -> np.ndarray:
    """sep 1.4.1's aperture functions want arrays, not bare scalars."""
    return np.array([v], dtype=np.float64)


def _median(values: np.ndarray) -> float:
    """np.median of a 1-D array, the same value, by one partition: np.median partitions about both
    middle elements, ~8x slower on the ~10,000 sky pixels of a band (a tenth of the Sersic fit)."""
    k = len(values) // 2
    part = np.partition(values, k)
    return float(part[k] if len(values) % 2 else (part[:k].max() + part[k]) / 2)


# --- detection and SE-like measurements ------------------------------------------------------------
def _constant_background(values: np.ndarray) -> tuple[float, float]:
    """SE's background estimator on one mesh: 3-sigma clipped statistics, mode = 2.5 median -
    1.5 mean unless the distribution is too skewed ((mean - median) / sigma >= 0.3: median)."""
    from astropy.stats import sigma_clipped_stats

    mean, med, std = sigma_clipped_stats(values, sigma=3.0, maxiters=10)
    back = 2.5 * med - 1.5 * mean if std > 0 and abs(mean - med) / std < 0.3 else med
    return float(back), float(std)


_PIXSTACK_LOCK = threading.Lock()


def _extract(sub: np.ndarray, rms: float) -> tuple[np.ndarray, np.ndarray]:
    """sep.extract set up as SE with the paper's configuration: (objects, segmentation map).

    SE's MEMORY_PIXSTACK bounds the pixels above threshold at any one time, and sep links its whole
    pixel stack before every extraction: for 300,000 that is ~0.9 ms, as long as the extraction of a
    127 px cutout itself. An image can never hold more pixels above threshold than it has, and a
    stack of N holds N - 2 (sep stops when its free list reaches the last entry), so the stack is
    sized min(MEMORY_PIXSTACK, pixels + 2): the same detections, and an overflow only where SE's
    would overflow. sep keeps the size in a process-wide setting, hence the lock and the restore.
    """
    with _PIXSTACK_LOCK:
        previous = sep.get_extract_pixstack()
        sep.set_extract_pixstack(min(MEMORY_PIXSTACK, sub.size + 2))
        try:
            return sep.extract(
                sub,
                DETECT_THRESH,
                err=rms,
                minarea=DETECT_MINAREA,
                filter_kernel=SE_FILTER,
                filter_type="conv",
                deblend_nthresh=DEBLEND_NTHRESH,
                deblend_cont=DEBLEND_MINCONT,
                clean=True,
                clean_param=CLEAN_PARAM,
                segmentation_map=True,
            )
        finally:
            sep.set_extract_pixstack(previous)


class Detection:
    """Background-subtracted image, global rms, sep catalogue and segmentation map of one band."""

    def __init__(self, image: np.ndarray) -> None:
        data = _native(image)
        valid = np.isfinite(data)
        if not valid.any():
            raise ValueError("no finite pixel")
        data[~valid] = 0.0
        self.valid = valid
        self.shape = data.shape
        self.centre = ((data.shape[1] - 1) / 2.0, (data.shape[0] - 1) / 2.0)
        self.data = data
        if valid.all():
            bkg = sep.Background(data, bw=BACK_SIZE, bh=BACK_SIZE, fw=BACK_FILTERSIZE, fh=BACK_FILTERSIZE)
            self.rms = float(bkg.globalrms)
            self.sub = data - bkg.back(dtype=data.dtype)
        else:
            # No-data pixels (a padded cutout): a 64-px mesh may then hold too few pixels (sep falls
            # back to rms 1.0), so take one constant background from the valid pixels instead.
            back, self.rms = _constant_background(data[valid])
            self.sub = data - data.dtype.type(back)
        self.sub[~valid] = 0.0
        if not (np.isfinite(self.rms) and self.rms > 0.0):
            # A flat image (all zeros, constant, saturated plateau): nothing stands above its noise.
            self.objects = np.zeros(0, dtype=[("x", "f8"), ("y", "f8")])
            self.segmap = np.zeros(self.shape, dtype=np.int32)
            return
        self.objects, self.segmap = _extract(self.sub, self.rms)

    def far_pixels(self, grow: int = SKY_MASK_GROW) -> np.ndarray:
        """Valid pixels more than `grow` px (in x or y) from every detection: where the sky is read."""
        return self.valid & ~ndimage.maximum_filter(self.segmap > 0, size=2 * grow + 1)

    def distances(self) -> np.ndarray:
        return np.hypot(self.objects["x"] - self.centre[0], self.objects["y"] - self.centre[1])


def mirror_neighbours(sub: np.ndarray, segmap: np.ndarray, seg_id: int, x: float, y: float) -> np.ndarray:
    """SE's MASK_TYPE CORRECT: pixels of other detections take the value of the pixel mirrored
    through the object's centre, or 0 when that pixel is outside the image or also another's."""
    other = (segmap != 0) & (segmap != seg_id)
    out = sub.copy()
    if not other.any():
        return out
    ys, xs = np.nonzero(other)
    # SE: x2 = (int)(2*mx + 0.49999 - x), C truncation toward zero
    x2 = np.trunc(2.0 * x + 0.49999 - xs).astype(np.int64)
    y2 = np.trunc(2.0 * y + 0.49999 - ys).astype(np.int64)
    h, w = sub.shape
    ok = (x2 >= 0) & (x2 < w) & (y2 >= 0) & (y2 < h)
    vals = np.zeros(len(xs), dtype=sub.dtype)
    okx, oky = x2[ok], y2[ok]
    good = ~other[oky, okx]
    idx = np.flatnonzero(ok)[good]
    vals[idx] = sub[oky[good], okx[good]]
    out[ys, xs] = vals
    return out


def _petrosian_steps() -> tuple[np.ndarray, ...]:
    """SE 2.25's annuli in units of A, in float32 as SE steps them: k from 6/20 by 6/20 while 1.2k < 6;
    (k^2, (1.2k)^2, kmea^2, kmea) with kmea = (k + 1.2k) / 2."""
    f = np.float32
    klim = f(SE_NSIG)
    kstep = f(klim / f(20.0))
    kmin, steps = kstep, []
    while (kmax := f(kmin * f(1.2))) < klim:
        kmea = f((kmin + kmax) / f(2.0))
        steps.append((f(kmin * kmin), f(kmax * kmax), f(kmea * kmea), kmea))
        kmin = f(kmin + kstep)
    return tuple(np.array(col, dtype=f) for col in zip(*steps))


_PETRO_STEPS = _petrosian_steps()


def petrosian_factor(
    sub: np.ndarray, usable: np.ndarray, x: float, y: float, cxx: float, cyy: float, cxy: float
) -> float:
    """SE 2.25's Petrosian factor (computepetroflux, first step), in units of A.

    Elliptical annuli [k, 1.2k] (_PETRO_STEPS); eta = mean surface brightness in the annulus over
    the mean inside (k + 1.2k)/2; the first k with eta < 0.2 gives PETRO_FACT x that mean radius,
    floored at 3.5. Pixels of other detections (`usable` False) are left out, as SE blanks them.
    Radii in float32, as SE's; every annulus at once, from the pixels sorted by radius.
    """
    f = np.float32
    mx, my = f(x), f(y)
    cx2, cy2, cxy_ = f(cxx), f(cyy), f(cxy)
    dxlim = cx2 - cxy_ * cxy_ / (f(4.0) * cy2)
    dxlim = f(SE_NSIG) / np.sqrt(dxlim) if dxlim > 0 else f(0.0)
    dylim = cy2 - cxy_ * cxy_ / (f(4.0) * cx2)
    dylim = f(SE_NSIG) / np.sqrt(dylim) if dylim > 0 else f(0.0)
    h, w = sub.shape
    xmin, xmax = max(int(np.rint(mx - dxlim)), 0), min(int(np.rint(mx + dxlim)) + 1, w)
    ymin, ymax = max(int(np.rint(my - dylim)), 0), min(int(np.rint(my + dylim)) + 1, h)
    dx = (np.arange(xmin, xmax, dtype=f) - mx)[None, :]
    dy = (np.arange(ymin, ymax, dtype=f) - my)[:, None]
    r2 = (cx2 * dx * dx + cy2 * dy * dy + cxy_ * dx * dy).astype(f)
    ok = usable[ymin:ymax, xmin:xmax]
    r2 = r2[ok]
    order = np.argsort(r2)
    r2 = r2[order]
    cum = np.concatenate([[0.0], np.cumsum(sub[ymin:ymax, xmin:xmax][ok][order], dtype=np.float64)])
    kmin2, kmax2, kmea2, kmea = _PETRO_STEPS
    lo = np.searchsorted(r2, kmin2, "left")  # pixels with r2 < kmin^2
    hi = np.searchsorted(r2, kmax2, "right")  # r2 <= kmax^2
    mid = np.searchsorted(r2, kmea2, "left")  # r2 < kmea^2: the inner disc
    area_num, area_den = hi - lo, mid
    with np.errstate(divide="ignore", invalid="ignore"):
        mu_num = (cum[hi] - cum[lo]) / area_num
        mu_den = cum[mid] / area_den
    measured = (area_num > 0) & (area_den > 0)
    below = np.flatnonzero(measured & (mu_num < mu_den * PETRO_ETA))
    j = int(below[0]) if len(below) else len(kmea) - 1  # SE keeps the last annulus when none falls below
    if measured[j] and mu_num[j] and mu_den[j]:
        return max(PHOT_PETROPARAMS[0] * float(kmea[j]), PHOT_PETROPARAMS[1])
    return PHOT_PETROPARAMS[1]


def _ellipse_sum(img: np.ndarray, x: float, y: float, a: float, b: float, theta: float, r: float) -> float:
    """Sum of pixels whose centre lies in the ellipse r*(a, b, theta), as SE's AUTO/PETRO fluxes do."""
    flux, _, _ = sep.sum_ellipse(img, _arr(x), _arr(y), _arr(a), _arr(b), _arr(theta), _arr(r), subpix=1)
    return float(flux[0])


class Photometry(NamedTuple):
    """What the Sersic fit takes from the SE measurements of its detection."""

    flux_auto: float
    r50: float  # radii holding 50% and 90% of flux_auto (on the neighbour-corrected image)
    r90: float


def _se_measurements(det: Detection, i: int) -> tuple[dict[str, float], Photometry]:
    """The SE-defined columns of detection i, and its photometry for the Sersic fit."""
    o = det.objects[i]
    seg_id = i + 1
    x, y, a, b = float(o["x"]), float(o["y"]), float(o["a"]), float(o["b"])
    theta = float(np.clip(o["theta"], -np.pi / 2 + 1e-7, np.pi / 2 - 1e-7))
    usable = (det.segmap == 0) | (det.segmap == seg_id)
    corrected = mirror_neighbours(det.sub, det.segmap, seg_id, x, y)

    kr, _ = sep.kron_radius(
        det.sub, _arr(x), _arr(y), _arr(a), _arr(b), _arr(theta), _arr(SE_NSIG),
        segmap=det.segmap, seg_id=np.array([seg_id], dtype=np.int32),
    )
    kr = float(kr[0])
    kron = max(PHOT_AUTOPARAMS[0] * kr, PHOT_AUTOPARAMS[1]) if kr > 0 else PHOT_AUTOPARAMS[1]
    flux_auto = _ellipse_sum(corrected, x, y, a, b, theta, kron)

    rlim = SE_NSIG * a
    radii, _ = sep.flux_radius(
        corrected, _arr(x), _arr(y), _arr(rlim), np.array([PHOT_FLUXFRAC, 0.9]), normflux=_arr(flux_auto), subpix=5
    )
    r50, r90 = float(radii[0][0]), float(radii[0][1])

    petro = petrosian_factor(det.sub, usable, x, y, float(o["cxx"]), float(o["cyy"]), float(o["cxy"]))
    if _ellipse_sum(corrected, x, y, a, b, theta, petro) <= 0.0:
        petro = 0.0
    peak = float(o["peak"])
    values = {
        "ellipticity": 1.0 - b / a,
        "half_light_radius": min(r50, rlim),
        "isophotal_area": float(o["tnpix"]),
        "major_axis": a,
        "minor_axis": b,
        "peak_surface_brightness": MAG_ZEROPOINT - 2.5 * math.log10(peak / PIXEL_SCALE**2) if peak > 0 else math.nan,
        "petro_rad": petro,
        "pos_angle": math.degrees(float(o["theta"])),
    }
    return values, Photometry(flux_auto, r50, r90)


# --- Sersic fit ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def default_psf() -> np.ndarray:
    """The stand-in PSF when a band has none: Moffat FWHM 0.7", beta 3, pixel-integrated at 0.168"/px."""
    import galsim

    img = galsim.Moffat(beta=DEFAULT_PSF_BETA, fwhm=DEFAULT_PSF_FWHM_ARCSEC).drawImage(
        nx=2 * MAX_PSF_HALF + 1, ny=2 * MAX_PSF_HALF + 1, scale=HSC_PIXEL_SCALE
    ).array
    img = img.astype(np.float64)
    img.setflags(write=False)
    return img


def _prepare_psf(psf: np.ndarray | None) -> np.ndarray:
    """Native float64, odd-sized, cropped to MAX_PSF_HALF about its centre, unit sum."""
    p = default_psf() if psf is None else _native(psf).astype(np.float64)
    if p.ndim != 2 or not np.all(np.isfinite(p)) or p.sum() <= 0:
        raise ValueError("unusable PSF image")
    ny, nx = p.shape
    hy, hx = min((ny - 1) // 2, MAX_PSF_HALF), min((nx - 1) // 2, MAX_PSF_HALF)
    cy, cx = ny // 2, nx // 2
    p = p[cy - hy : cy + hy + 1, cx - hx : cx + hx + 1]
    return p / p.sum()


_C_N = np.exp(np.linspace(np.log(SERSIC_N_BOUNDS[0]), np.log(SERSIC_N_BOUNDS[1]), 200))
_C_TABLE = np.array([(special.gammaincinv(2 * n, 0.9) / special.gammaincinv(2 * n, 0.5)) ** n for n in _C_N])


def concentration_index(r50: float, r90: float, psf_r50: float, psf_r90: float) -> float:
    """Cheap Sersic index from r90/r50 after removing the PSF's radii in quadrature (start and fallback)."""
    d50 = math.sqrt(max(r50**2 - psf_r50**2, 0.25))
    d90 = math.sqrt(max(r90**2 - psf_r90**2, 0.5))
    return float(np.interp(d90 / d50, _C_TABLE, _C_N))


class FitResult(NamedTuple):
    x: np.ndarray
    cost: float  # sum of squared residuals at x
    nfev: int
    converged: bool
    residual: np.ndarray  # r(x)
    jac: np.ndarray  # dr/dp at x


def levenberg_marquardt(
    evaluate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    p0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    xtol: np.ndarray,
    *,
    ftol: float = 1e-3,
    max_nfev: int = 60,
) -> FitResult:
    """Minimise |r(p)|^2 for `evaluate(p) -> (r, dr/dp)` within the box [lo, hi] (steps clipped to it).

    Marquardt's damping scaled by diag(J^T J); stops when every |step| <= xtol or the cost falls, or
    would fall by the linear model's prediction for the next step, by less than ftol of itself
    (1e-3: for a stamp of ~1,500 pixels a last gain under ~1.5 in chi^2; 1e-4 took one more
    evaluation per fit and changed no bias or scatter on the accuracy benchmark).

    Written out rather than scipy.optimize.least_squares because for six parameters and ~5
    evaluations scipy's per-call bookkeeping (SVDs, scaling, checks) cost ~40% of the fit, and the
    fit is most of the morphology stage's time; on the Sersic benchmark it ends at the same or a
    lower cost than scipy's 'trf' in every case compared.
    """
    p = np.clip(np.asarray(p0, dtype=np.float64), lo, hi)
    r, jac = evaluate(p)
    cost, nfev, damping = float(r @ r), 1, 1e-3
    while nfev < max_nfev:
        grad, hess = jac.T @ r, jac.T @ jac
        diag = np.diag(np.maximum(np.diag(hess), 1e-12))
        first = True
        while nfev < max_nfev:
            trial = np.clip(p - np.linalg.solve(hess + damping * diag, grad), lo, hi)
            step = trial - p
            if first and -(2.0 * step @ grad + step @ hess @ step) <= ftol * cost:
                return FitResult(p, cost, nfev, True, r, jac)  # the next step's predicted gain is too small
            first = False
            r_t, jac_t = evaluate(trial)
            nfev += 1
            cost_t = float(r_t @ r_t)
            if cost_t <= cost:
                break
            damping *= 10.0
        else:
            break
        step, gain = trial - p, cost - cost_t
        p, r, jac, cost = trial, r_t, jac_t, cost_t
        damping = max(damping / 10.0, 1e-7)
        if np.all(np.abs(step) <= xtol) or gain <= ftol * cost:
            return FitResult(p, cost, nfev, True, r, jac)
    return FitResult(p, cost, nfev, False, r, jac)


# The Sersic profile's 2-D Fourier transform, a Hankel transform of order 0, by FFTLog on a log-spaced
# radius grid wide enough for n in [0.2, 8] (1e-12..1e4 r_e: the profile is negligible beyond both
# ends); 1,024 points keep the transform within 2e-4 of its value at k = 0 against 8,192.
_HANKEL_POINTS = 1024
_LN_R = np.linspace(-12 * math.log(10), 4 * math.log(10), _HANKEL_POINTS, endpoint=False)
_DLN = float(_LN_R[1] - _LN_R[0])
_FHT_OFFSET = float(sfft.fhtoffset(_DLN, mu=0, initial=0.0))
#: ln k of the transform's grid (k in radians per r_e), ascending.
_LN_K = _FHT_OFFSET - _LN_R[::-1]


def _fht_kernel() -> np.ndarray:
    """scipy.fft.fht is a circular convolution in ln r: its kernel's transform, computed once (fht
    itself recomputes the gamma-function coefficients on every call, ~10x the transform's cost)."""
    delta = np.zeros(_HANKEL_POINTS)
    delta[0] = 1.0
    return sfft.rfft(sfft.fht(delta, _DLN, mu=0, offset=_FHT_OFFSET)[::-1])


_FHT_KERNEL = _fht_kernel()


def _sersic_constants(n: float) -> tuple[float, float]:
    """b_n (so that r_e holds half the light) and the log of the unit-flux profile's normalisation
    at r_e = 1: I(r) = exp(-b_n r^(1/n) - ln_norm), ln_norm = ln(2 pi n Gamma(2n) / b_n^2n)."""
    b = float(special.gammaincinv(2.0 * n, 0.5))
    return b, math.log(2.0 * math.pi * n) + float(special.gammaln(2.0 * n)) - 2.0 * n * math.log(b)


def _axes(e1: float, e2: float) -> tuple[float, float, float, float, float]:
    """(e, q, cos phi, sin phi, dq/de) of the ellipticity (e1, e2) = e (cos 2phi, sin 2phi), with
    e clipped to 0.9 for q (and dq/de 0 beyond) and kept above 1e-6."""
    e = max(math.hypot(e1, e2), 1e-6)
    e_eff = min(e, 0.9)
    phi = 0.5 * math.atan2(e2, e1)
    dq_de = 0.0 if e > 0.9 else -2.0 / (1.0 + e_eff) ** 2
    return e, (1.0 - e_eff) / (1.0 + e_eff), math.cos(phi), math.sin(phi), dq_de


def sersic_transform(n: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, dT/dln n) on _LN_K: the 2-D Fourier transform of the unit-flux circular Sersic profile
    of index n and half-light radius 1, T(k) = 2 pi int I(r) J0(k r) r dr (T(0) = 1)."""
    b, ln_norm = _sersic_constants(n)
    db_dn = (float(special.gammaincinv(2.0 * n * 1.001, 0.5)) - b) / (0.001 * n)
    rpow = np.exp(_LN_R / n)
    a = 2.0 * math.pi * np.exp(-b * rpow - ln_norm + _LN_R)  # 2 pi r I(r), FFTLog's input
    dln_norm = 1.0 / n + 2.0 * float(special.digamma(2.0 * n)) - 2.0 * math.log(b) - 2.0 * n * db_dn / b
    dlnI_dlnn = n * (-db_dn * rpow + b * rpow * _LN_R / n**2 - dln_norm)
    both = sfft.irfft(sfft.rfft(np.stack([a, a * dlnI_dlnn]), axis=-1) * _FHT_KERNEL, _HANKEL_POINTS, axis=-1)
    both = both[:, ::-1] * np.exp(-_LN_K)
    return both[0], both[1]


#: ln n nodes of the tabulated transform: 160 over [0.2, 8] (a step of 0.023 in ln n, where cubic
#: Hermite interpolation from the nodes' values and exact n-derivatives is good to 2e-7, its slope to 0.2%).
_LN_N_NODES = np.linspace(math.log(SERSIC_N_BOUNDS[0]), math.log(SERSIC_N_BOUNDS[1]), 160)


@lru_cache(maxsize=1)
def _transform_table() -> np.ndarray:
    """sersic_transform at every _LN_N_NODES (~15 ms, once per process), laid out for interpolation:
    for each pair of neighbouring nodes j, j + 1 the rows (T_j, h S_j, T_j+1, h S_j+1), S = dT/dln n
    and h the nodes' step, each row the four blocks (value, its gradient in ln k, and the steps of
    both to the next point in ln k): float32, (nodes - 1, 4, 4 * _HANKEL_POINTS)."""
    h = float(_LN_N_NODES[1] - _LN_N_NODES[0])
    rows = [sersic_transform(math.exp(v)) for v in _LN_N_NODES]

    def blocks(a: np.ndarray) -> np.ndarray:
        a = np.concatenate([a, np.gradient(a, _DLN, axis=1)], axis=1).reshape(len(a), 2, -1)
        return np.concatenate([a, np.diff(a, axis=2, append=a[:, :, -1:])], axis=1).reshape(len(a), -1)

    values, slopes = blocks(np.stack([r[0] for r in rows])), blocks(h * np.stack([r[1] for r in rows]))
    return np.stack([values[:-1], slopes[:-1], values[1:], slopes[1:]], axis=1).astype(np.float32)


def _hermite(ln_n: float) -> np.ndarray:
    """Cubic Hermite interpolation in ln n between the table's nodes: (2, 4, _HANKEL_POINTS), the
    value and the interpolant's own derivative in ln n (so the fit's Jacobian is that of the model
    it evaluates), each of (T, dT/dln k, their steps in ln k), from one (2 x 4) product."""
    h = float(_LN_N_NODES[1] - _LN_N_NODES[0])
    u = min(max((ln_n - _LN_N_NODES[0]) / h, 0.0), len(_LN_N_NODES) - 1.000001)
    j = int(u)
    s = u - j
    s2, s3 = s * s, s * s * s
    weights = np.array(
        [
            [2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, 3 * s2 - 2 * s3, s3 - s2],
            [(6 * s2 - 6 * s) / h, (3 * s2 - 4 * s + 1) / h, (6 * s - 6 * s2) / h, (3 * s2 - 2 * s) / h],
        ],
        dtype=np.float32,
    )
    return (weights @ _transform_table()[j]).reshape(2, 4, _HANKEL_POINTS)


def interpolated_transform(ln_n: float) -> tuple[np.ndarray, np.ndarray]:
    """sersic_transform(exp(ln_n)) from the table: (T, dT/dln n) on _LN_K."""
    both = _hermite(ln_n)
    return both[0, 0], both[1, 0]


def _ln_k_tables(ln_n: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, dT/dln k, dT/dln n) on _LN_K at n = exp(ln_n), and each row's step to the next point (0
    after the last): what linear interpolation in ln k needs."""
    both = _hermite(ln_n)
    return both[[0, 0, 1], [0, 1, 0]], both[[0, 0, 1], [2, 3, 2]]


class _Grid(NamedTuple):
    """A model grid's rfft2 wavenumbers (kx a row, ky a column), (kx^2, ky^2, kx ky) flattened,
    -i kx and -i ky (the centre's derivatives), and the PSF's DFT."""

    kx: np.ndarray
    ky: np.ndarray
    quad: np.ndarray
    minus_ikx: np.ndarray
    minus_iky: np.ndarray
    psf_ft: np.ndarray


class SersicFitter:
    """PSF-convolved elliptical Sersic model of one stamp, fitted by levenberg_marquardt.

    Free: centre (x0, y0), log r_e (circularised half-light radius), log n and the ellipticity
    (e1, e2) = e (cos 2phi, sin 2phi) with axis ratio q = (1 - e) / (1 + e). The flux is solved
    linearly at each step (variable projection, Kaufman's Jacobian); the sky is fixed beforehand
    (fit_sersic_index), since fitting it too trades against n.

    The model is built in Fourier space: the profile's transform (sersic_transform, at the
    elliptical wavenumber) times the PSF image's DFT times the centre's phase, then one inverse FFT
    per plane. The PSF image is pixel-integrated, so this is the pixel-integrated convolved profile
    exactly (no sub-pixel sampling; the cusp of a high-n profile costs nothing), and every
    derivative is analytic or a product in Fourier space. The grid is periodic: MODEL_PAD pixels
    around the stamp keep the light wrapped in from outside small.
    """

    # light beyond the grid wraps in; 8 px left n = 4 fits 0.035 dex low at S/N 30, 16 px within 0.01
    MODEL_PAD = 16
    XTOL = np.array([1e-4, 1e-4, 1e-4, 1e-4, 5e-5, 5e-5])  # converged steps in (x0, y0, log re, log n, e1, e2)

    def __init__(self, psf: np.ndarray) -> None:
        self.psf = psf
        self.psf_radii = self._radii(psf)
        self._grids: dict[tuple[int, int], _Grid] = {}

    @staticmethod
    def _radii(img: np.ndarray) -> tuple[float, float]:
        """Radii holding 50% and 90% of a PSF image's flux."""
        cy, cx = (img.shape[0] - 1) / 2.0, (img.shape[1] - 1) / 2.0
        r, _ = sep.flux_radius(np.ascontiguousarray(img), _arr(cx), _arr(cy), _arr(cx), np.array([0.5, 0.9]), subpix=5)
        return float(r[0][0]), float(r[0][1])

    def _grid(self, shape: tuple[int, int]) -> "_Grid":
        """The rfft2 grid of `shape` (wavenumbers, their products, the PSF's DFT), computed once per shape."""
        grid = self._grids.get(shape)
        if grid is None:
            k = np.zeros(shape)
            ph, pw = min(self.psf.shape[0], shape[0]), min(self.psf.shape[1], shape[1])
            cy, cx = self.psf.shape[0] // 2, self.psf.shape[1] // 2
            k[:ph, :pw] = self.psf[cy - ph // 2 : cy - ph // 2 + ph, cx - pw // 2 : cx - pw // 2 + pw]
            k = np.roll(k, (-(ph // 2), -(pw // 2)), axis=(0, 1))
            ky = 2.0 * np.pi * sfft.fftfreq(shape[0])[:, None]
            kx = 2.0 * np.pi * sfft.rfftfreq(shape[1])[None, :]
            kx_full, ky_full = np.broadcast_arrays(kx, ky)
            grid = _Grid(
                kx=kx.astype(np.float32),
                ky=ky.astype(np.float32),
                quad=np.stack([kx_full**2, ky_full**2, kx_full * ky_full]).reshape(3, -1).astype(np.float32),
                minus_ikx=(-1j * kx).astype(np.complex64),
                minus_iky=(-1j * ky).astype(np.complex64),
                psf_ft=sfft.rfft2(k / k.sum()).astype(np.complex64),
            )
            self._grids[shape] = grid
        return grid

    def model(self, p: np.ndarray, gx: int, gy: int, shape: tuple[int, int], rows: slice = slice(None)) -> np.ndarray:
        """Convolved unit-flux model and its derivatives d/d(x0, y0, lre, ln, e1, e2): (7, *shape),
        on the grid whose pixel (0, 0) is image pixel (gx, gy); only the grid's `rows` if given (the
        inverse FFT's second pass then runs on those alone)."""
        g = self._grid(shape)
        x0, y0, lre, ln, e1, e2 = (float(v) for v in p)
        e, q, c, s, dq_de = _axes(e1, e2)
        # The profile is I(rho / r_e), rho^2 = q u^2 + v^2 / q along (u, v) = the axes rotated by phi;
        # its transform is T(kappa r_e), kappa^2 = k_u^2 / q + q k_v^2 (an area-preserving stretch).
        # kappa^2 and the numerators of its derivatives in e1, e2 are quadratic forms in (kx, ky):
        # one 3x3 product with the grid's (kx^2, ky^2, kx ky).
        cc, ss, cs = c * c, s * s, c * s
        ku2, kv2, kukv = (cc, ss, 2 * cs), (ss, cc, -2 * cs), (-cs, cs, cc - ss)  # k_u^2, k_v^2, k_u k_v
        dq = [(q * v - u / q) / (2.0 * q) for u, v in zip(ku2, kv2)]  # kappa^2 dln kappa / dq
        dphi = [(1.0 / q - q) * w for w in kukv]  # kappa^2 dln kappa / dphi
        a1, b1, a2, b2 = dq_de * e1 / e, -0.5 * e2 / e**2, dq_de * e2 / e, 0.5 * e1 / e**2  # dq, dphi / de1, de2
        coeffs = np.array(
            [
                [u / q + q * v for u, v in zip(ku2, kv2)],
                [a1 * x + b1 * y for x, y in zip(dq, dphi)],
                [a2 * x + b2 * y for x, y in zip(dq, dphi)],
            ],
            dtype=np.float32,
        )
        forms = (coeffs @ g.quad).reshape(3, *g.psf_ft.shape)
        kappa2 = np.maximum(forms[0], np.float32(1e-30))
        t = np.log(kappa2)
        t *= np.float32(0.5 / _DLN)
        t += np.float32((lre - _LN_K[0]) / _DLN)
        np.clip(t, 0, _HANKEL_POINTS - 2, out=t)
        i = t.astype(np.intp)
        t -= i  # the weight of the upper node: linear interpolation in ln k
        values, steps = _ln_k_tables(ln)
        tv = np.take(values, i, axis=1)
        tv += np.take(steps, i, axis=1) * t  # (T, dT/dln k, dT/dln n) at kappa r_e
        base = g.psf_ft * np.exp(-1j * (y0 - gy) * g.ky)  # the centre's phase (complex64: kx, ky are float32)
        base *= np.exp(-1j * (x0 - gx) * g.kx)
        stack = np.empty((7, *base.shape), dtype=np.complex64)
        np.multiply(tv[0], base, out=stack[0])
        np.multiply(stack[0], g.minus_ikx, out=stack[1])
        np.multiply(stack[0], g.minus_iky, out=stack[2])
        np.multiply(tv[1], base, out=stack[3])  # T(kappa r_e): d/dln r_e = d/dln(kappa r_e)
        np.multiply(tv[2], base, out=stack[4])
        np.multiply(stack[3], forms[1] / kappa2, out=stack[5])
        np.multiply(stack[3], forms[2] / kappa2, out=stack[6])
        return sfft.irfft(sfft.ifft(stack, axis=1, overwrite_x=True)[:, rows], n=shape[1], axis=2)

    def grid_shape(self, stamp_shape: tuple[int, int]) -> tuple[int, int]:
        """The model grid of a stamp: padded by MODEL_PAD on each side, to a fast FFT length."""
        return tuple(sfft.next_fast_len(side + 2 * self.MODEL_PAD, real=True) for side in stamp_shape)

    def fit(
        self, data: np.ndarray, weight: np.ndarray, x0g: int, y0g: int, p0: np.ndarray, bounds: tuple
    ) -> tuple[FitResult, float]:
        """Fit p = (x0, y0, log re, log n, e1, e2) to the stamp `data` (pixel (0, 0) = image (x0g, y0g))
        with per-pixel weights 1/sigma (0 = masked): the result (residuals and Jacobian over the
        stamp's pixels in row-major order, masked ones 0) and the flux at its x."""
        pad = self.MODEL_PAD
        sh, sw = data.shape
        shape = self.grid_shape(data.shape)
        wts = weight.astype(np.float32)
        wd = (np.where(weight > 0, data, 0.0) * weight).ravel()
        fluxes: dict[bytes, float] = {}

        def evaluate(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # masked pixels have weight 0: their rows of r and J are 0, which costs less than selecting
            planes = self.model(p, x0g - pad, y0g - pad, shape, rows=slice(pad, pad + sh))[:, :, pad : pad + sw]
            stack = (planes * wts).reshape(7, -1).astype(np.float64)
            m, d = stack[0], stack[1:]
            mm = float(m @ m)
            flux = float(m @ wd) / mm  # the linear parameter, solved exactly
            fluxes[p.tobytes()] = flux
            jac = d - np.outer(d @ m / mm, m)  # Kaufman's variable-projection Jacobian, over flux
            jac *= flux
            return flux * m - wd, jac.T

        res = levenberg_marquardt(evaluate, p0, bounds[0], bounds[1], self.XTOL)
        return res, fluxes[res.x.tobytes()]


def sersic_profile(p: np.ndarray, flux: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The unconvolved model p of total `flux` at pixel centres (xs, ys): where the PSF no longer
    matters (far from the centre), what the galaxy adds to a pixel."""
    x0, y0, lre, ln, e1, e2 = (float(v) for v in p)
    n = math.exp(ln)
    _, q, c, s, _ = _axes(e1, e2)
    dx, dy = xs - xs.dtype.type(x0), ys - ys.dtype.type(y0)
    u, v = dx * c + dy * s, dy * c - dx * s
    rho2 = (q * u * u + v * v / q) * math.exp(-2.0 * lre)
    b, ln_norm = _sersic_constants(n)
    return flux * np.exp(-b * rho2 ** (0.5 / n) - ln_norm - 2.0 * lre)


def sersic_fitter(psf: np.ndarray | None) -> SersicFitter:
    """The fitter of a PSF image, shared by every band image with the same PSF (so its transforms
    and radii are computed once per PSF, not once per image)."""
    p = _prepare_psf(psf)
    return _cached_fitter(p.shape, p.tobytes())


@lru_cache(maxsize=32)
def _cached_fitter(shape: tuple[int, int], data: bytes) -> SersicFitter:
    return SersicFitter(np.frombuffer(data).reshape(shape).copy())  # sep needs a writable array


def fit_sersic_index(det: Detection, i: int, phot: Photometry, fitter: SersicFitter) -> tuple[float, bool, bool]:
    """Sersic index of detection i: (n, at_bound, failed). On failure n is the concentration estimate."""
    o = det.objects[i]
    x, y, a, b = float(o["x"]), float(o["y"]), float(o["a"]), float(o["b"])
    seg_id = i + 1
    r50 = phot.r50
    p50, p90 = fitter.psf_radii
    n_conc = concentration_index(r50, phot.r90, p50, p90) if (phot.flux_auto > 0 and r50 > 0) else 1.0
    try:
        half = int(min(5 * a + 6, MAX_STAMP_HALF))
        h, w = det.shape
        xc, yc = int(round(x)), int(round(y))
        x0g, x1g = max(xc - half, 0), min(xc + half + 1, w)
        y0g, y1g = max(yc - half, 0), min(yc + half + 1, h)
        raw = det.data[y0g:y1g, x0g:x1g]
        seg = det.segmap[y0g:y1g, x0g:x1g]
        weight = (((seg == 0) | (seg == seg_id)) & det.valid[y0g:y1g, x0g:x1g]).astype(np.float64) / det.rms
        # starting point: sep centroid, PSF-deconvolved moments and concentration index
        s2 = (p50 / 1.1774) ** 2  # Gaussian-equivalent PSF variance from its half-light radius
        q0 = math.sqrt(max(b * b - s2, 0.04) / max(a * a - s2, 0.04))
        q0 = min(max(q0, 0.2), 1.0)
        e0 = max((1 - q0) / (1 + q0), 1e-3)
        th = float(o["theta"])
        re0 = math.sqrt(max(r50**2 - p50**2, 0.25))
        lo_n, hi_n = SERSIC_N_BOUNDS
        n0 = min(max(n_conc, 0.5), 6.0)
        p0 = np.array([x, y, math.log(re0), math.log(n0), e0 * math.cos(2 * th), e0 * math.sin(2 * th)])
        lo = np.array([x - 3, y - 3, math.log(0.2), math.log(lo_n), -0.9, -0.9])
        hi = np.array([x + 3, y + 3, math.log(3.0 * max(half, 3)), math.log(hi_n), 0.9, 0.9])
        p0 = np.clip(p0, lo + 1e-6, hi - 1e-6)
        # The sky: the median of the pixels away from every detection, which still hold the wings of
        # a high-n galaxy (an n = 4 profile keeps ~15% of its light beyond 5 r_e). So the fitted
        # galaxy's light is taken out of those pixels, the sky read again, and the fit moved to the
        # new sky by one Gauss-Newton step from its Jacobian (the sky moves by a fraction of the noise).
        fy, fx = np.nonzero(det.far_pixels())
        crowded = len(fy) < 100  # or mostly padded: then SE's background
        sky_pixels = det.data[fy, fx]
        # the first reading only starts the fit, and every fourth pixel is enough for that
        sky = _median((det.data - det.sub).ravel()) if crowded else _median(sky_pixels[::4])
        res, flux = fitter.fit(raw - sky, weight, x0g, y0g, p0, (lo, hi))
        x_fit = res.x
        if not crowded:
            galaxy = sersic_profile(res.x, flux, fx.astype(np.float32), fy.astype(np.float32))
            shift = _median(sky_pixels - galaxy) - sky
            jtj, jtr = res.jac.T @ res.jac, res.jac.T @ (res.residual + shift * weight.ravel())
            try:
                step = np.linalg.solve(jtj, jtr)
            except np.linalg.LinAlgError:
                step = np.linalg.lstsq(jtj, jtr, rcond=None)[0]
            x_fit = np.clip(res.x - step, lo, hi)
        n = math.exp(x_fit[3])
        if not (res.converged and math.isfinite(n)):
            return n_conc, False, True
        at_bound = abs(x_fit[3] - math.log(lo_n)) < 0.01 or abs(x_fit[3] - math.log(hi_n)) < 0.01
        return n, at_bound, False
    except Exception:  # any failure of the fit leaves the other columns standing
        return n_conc, False, True


# --- public API --------------------------------------------------------------------------------------
def measure_band(image: np.ndarray, psf: np.ndarray | None, *, fit_sersic: bool = True) -> dict[str, Any]:
    """Measure one band image: BAND_COLUMNS for its central galaxy (the detection nearest the centre).

    `psf`: that band's PSF image (pixel-integrated, any size, centred); None uses default_psf().
    Never raises on image content: a band that cannot be measured comes back with NaN values and
    measurement_error True; one without detections has zero counts and no_detection True.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"a band image must be 2-D, got shape {image.shape}")
    row = _blank_row()
    try:
        det = Detection(image)
        n_obj = len(det.objects)
        row["total_galaxies"] = float(n_obj)
        dist = det.distances()
        for r in NEIGHBOUR_RADII:
            row[f"central_image_pop_{r}px_rad"] = float(np.count_nonzero(dist <= r))
        if n_obj == 0:
            row["no_detection"] = True
            return row
        i = int(np.argmin(dist))
        values, phot = _se_measurements(det, i)
        row.update(values)
        row["blended_centre"] = bool(det.objects[i]["flag"] & sep.OBJ_MERGED)
        if fit_sersic:
            n, at_bound, failed = fit_sersic_index(det, i, phot, sersic_fitter(psf))
            row.update(sersic_index=n, sersic_at_bound=at_bound, sersic_failed=failed)
        expected = [c for c in MEASUREMENT_COLUMNS if fit_sersic or c != "sersic_index"]
        if not all(math.isfinite(row[c]) for c in expected):
            return _error_row()
        return {c: (bool(v) if c in FLAG_COLUMNS else float(v)) for c, v in row.items()}
    except Exception:  # sep raises where SE carries on (pixel stack, deblending overflow, ...)
        return _error_row()


def measure_galaxy(
    cube: np.ndarray, psfs: Sequence[np.ndarray | None] | None, bands: Sequence[str] = BANDS, *, fit_sersic: bool = True
) -> dict[str, Any]:
    """Measure every band of a (n_bands, H, W) cube: `{band}_{column}` for all BAND_COLUMNS.

    A band that fails comes back as NaN values with `{band}_measurement_error` True; this never
    raises for image content (a cube whose band count differs from `bands` is a caller error).
    """
    cube = np.asarray(cube)
    if cube.ndim != 3 or cube.shape[0] != len(bands):
        raise ValueError(f"cube of shape {cube.shape} does not hold {len(bands)} band images")
    if psfs is not None and len(psfs) != len(bands):
        raise ValueError(f"{len(psfs)} PSFs for {len(bands)} bands")
    out: dict[str, Any] = {}
    for k, band in enumerate(bands):
        try:
            row = measure_band(cube[k], None if psfs is None else psfs[k], fit_sersic=fit_sersic)
        except Exception:
            row = _error_row()
        out.update({f"{band}_{c}": row[c] for c in BAND_COLUMNS})
    return out


# --- command -----------------------------------------------------------------------------------------
def read_fits_image(path: str | Path) -> np.ndarray:
    """The image of a cutout FITS file: HDU 1 as the HSC cutout service writes it, else the primary
    HDU; 2-D (one band) or 3-D (a stack of bands or PSFs)."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        for hdu in list(hdul[1:2]) + [hdul[0]]:
            if hdu.data is not None and getattr(hdu, "is_image", False) and hdu.data.ndim in (2, 3):
                return _native(hdu.data)
    raise ValueError(f"{path}: no 2-D or 3-D image in HDU 1 or the primary HDU")


def fits_band(path: str | Path) -> str | None:
    """The band a cutout file is of, from the FILTER card of its image or primary header (HSC-I,
    HSC-I2, or a bare band letter), or None when no card says."""
    from astropy.io import fits

    from galaxiesml.hsc.format import BAND_OF_FILTER

    with fits.open(path, memmap=False) as hdul:
        for hdu in list(hdul[1:2]) + [hdul[0]]:
            value = str(hdu.header.get("FILTER", "")).strip()
            band = BAND_OF_FILTER.get(value.upper(), value.lower() if value.lower() in BANDS else None)
            if band:
                return band
    return None


def psfs_for(path: str, planes: int, band: str | None, psf: np.ndarray | None) -> list[np.ndarray | None]:
    """The PSF of each image plane of `path`: a 2-D PSF for every plane; a cube's planes in turn for
    a stack of as many bands; for one band, the cube's plane of its FILTER. Raises ValueError (one
    line) where the band's own PSF cannot be told: never another band's PSF without a word."""
    if psf is None or psf.ndim == 2:
        return [psf] * planes
    if planes > 1 or len(psf) == 1:
        if len(psf) != planes:
            raise ValueError(f"{path}: {planes} image planes for a PSF cube of {len(psf)}")
        return list(psf)
    if band is None:
        raise ValueError(f"{path}: one band image and a PSF cube of {len(psf)} planes, but no FILTER card says which "
                         "band it is: give that band's PSF as a 2-D file, or add FILTER to the header")
    if len(psf) != len(BANDS):
        raise ValueError(f"{path}: a PSF cube of {len(psf)} planes does not hold one per band ({', '.join(BANDS)})")
    return [psf[BANDS.index(band)]]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m galaxiesml.morphology FILE.fits ... [--psf PSF.fits] [--format csv|json] [--no-sersic]`."""
    ap = argparse.ArgumentParser(prog="python -m galaxiesml.morphology", description=main.__doc__)
    ap.add_argument("files", nargs="+", help="FITS cutouts (2-D band images or 3-D stacks of bands)")
    ap.add_argument("--psf", help="PSF FITS file: 2-D, or a cube with one plane per band (g..y), of which a "
                    "one-band cutout takes the plane of its FILTER")
    ap.add_argument("--format", choices=("csv", "json"), default="csv")
    ap.add_argument("--no-sersic", action="store_true", help="skip the Sersic fit (sersic_index NaN)")
    args = ap.parse_args(argv)
    psf = read_fits_image(args.psf) if args.psf else None
    rows = []
    for f in args.files:
        try:
            img = read_fits_image(f)
        except Exception as exc:  # an unreadable file is one error row, not the end of the run
            print(f"{f}: {exc}", file=sys.stderr)
            rows.append({"file": f, "plane": 0, **_error_row()})
            continue
        planes = img if img.ndim == 3 else img[None]
        try:
            psfs = psfs_for(f, len(planes), fits_band(f) if img.ndim == 2 else None, psf)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for k, (plane, p) in enumerate(zip(planes, psfs)):
            rows.append({"file": f, "plane": k, **measure_band(plane, p, fit_sersic=not args.no_sersic)})
    fields = ["file", "plane", *BAND_COLUMNS]
    if args.format == "json":
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        json.dump(clean, sys.stdout, indent=1, default=lambda v: v.item())
        sys.stdout.write("\n")
    else:
        wr = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (int(v) if isinstance(v, (bool, np.bool_)) else v) for k, v in r.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
