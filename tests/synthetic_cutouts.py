"""Synthetic HSC-like 127x127 cutouts rendered with GalSim, for the morphology tests and benchmarks.

A central Sersic galaxy near pixel (63, 63) plus 0-4 neighbours, each convolved with a Moffat PSF
(FWHM 0.70", beta 3) drawn at the HSC pixel scale (0.168"/px), with Gaussian noise. The truth of the
central galaxy comes back with the image, so tests can check the Sersic fit against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import galsim
import numpy as np

SIZE = 127
PIXEL_SCALE = 0.168
PSF_FWHM = 0.70
PSF_BETA = 3.0
#: GalSim builds a lookup table per distinct Sersic index: a small fixed set keeps rendering fast.
NEIGHBOUR_N = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass
class Cutout:
    """One rendered cutout: image (float32, SIZE x SIZE) and the central galaxy's truth."""

    image: np.ndarray
    n: float
    hlr_px: float
    q: float
    beta_deg: float
    flux: float
    noise_sigma: float
    n_neighbours: int
    extras: dict = field(default_factory=dict)


def moffat_psf(fwhm: float = PSF_FWHM) -> galsim.GSObject:
    """The Moffat PSF used for every rendered cutout."""
    return galsim.Moffat(beta=PSF_BETA, fwhm=fwhm)


def psf_image(fwhm: float = PSF_FWHM, size: int = 31) -> np.ndarray:
    """The pixel-convolved PSF image (as an HSC PSF picker gives it), normalised to unit sum."""
    img = moffat_psf(fwhm).drawImage(nx=size, ny=size, scale=PIXEL_SCALE).array
    return (img / img.sum()).astype(np.float64)


def _sersic(n: float, hlr_arcsec: float, flux: float, q: float, beta_deg: float) -> galsim.GSObject:
    gal = galsim.Sersic(n=n, half_light_radius=hlr_arcsec, flux=flux, trunc=0.0)
    return gal.shear(q=q, beta=beta_deg * galsim.degrees)


def render_cutout(
    rng: np.random.Generator,
    *,
    n: float | None = None,
    snr: float | None = None,
    neighbours: tuple[int, int] = (1, 4),
    hlr_arcsec: tuple[float, float] = (0.3, 1.2),
    q_range: tuple[float, float] = (0.35, 1.0),
    sky: float = 0.0,
) -> Cutout:
    """Render one cutout.

    n: the central galaxy's Sersic index (default: drawn from NEIGHBOUR_N).
    snr: the central galaxy's S/N as a catalogue gives it, FLUX_AUTO / FLUXERR_AUTO (SE's Kron
    aperture, GAIN 0: sigma x sqrt(aperture pixels)), set on the noiseless galaxy (see auto_snr);
    the matched-filter S/N, sqrt(sum(I^2))/sigma, is about 1.5 times higher.
    Default: a flux giving S/N between ~10 and ~250 at unit noise.
    neighbours: inclusive range of the number of neighbours placed anywhere in the cutout.
    """
    sigma = 1.0
    if n is None:
        n = float(rng.choice(NEIGHBOUR_N))
    hlr = float(rng.uniform(*hlr_arcsec))
    q = float(rng.uniform(*q_range))
    beta = float(rng.uniform(0.0, 180.0))
    psf = moffat_psf()
    centre = galsim.PositionD(rng.uniform(-0.5, 0.5) * PIXEL_SCALE, rng.uniform(-0.5, 0.5) * PIXEL_SCALE)

    central = galsim.Convolve(_sersic(n, hlr, 1.0, q, beta), psf).shift(centre)
    unit = central.drawImage(nx=SIZE, ny=SIZE, scale=PIXEL_SCALE).array
    if snr is None:
        snr = float(np.exp(rng.uniform(np.log(10.0), np.log(250.0))))
    flux = snr * sigma / float(np.sqrt(np.sum(unit**2)))
    for _ in range(3):  # the aperture grows with the flux: converge on the requested S/N
        flux *= snr / auto_snr(flux * unit, sigma)
    image = flux * unit

    n_nb = int(rng.integers(neighbours[0], neighbours[1] + 1))
    for _ in range(n_nb):
        off = rng.uniform(-58, 58, size=2)
        nb = _sersic(
            float(rng.choice(NEIGHBOUR_N)),
            float(rng.uniform(0.2, 0.9)),
            float(flux * np.exp(rng.uniform(np.log(0.05), np.log(2.0)))),
            float(rng.uniform(0.35, 1.0)),
            float(rng.uniform(0.0, 180.0)),
        )
        shifted = galsim.Convolve(nb, psf).shift(off[0] * PIXEL_SCALE, off[1] * PIXEL_SCALE)
        image = image + shifted.drawImage(nx=SIZE, ny=SIZE, scale=PIXEL_SCALE).array

    image = image + sky + rng.normal(0.0, sigma, size=image.shape)
    return Cutout(
        image=image.astype(np.float32),
        n=n,
        hlr_px=hlr / PIXEL_SCALE,
        q=q,
        beta_deg=beta,
        flux=flux,
        noise_sigma=sigma,
        n_neighbours=n_nb,
        extras={"snr": snr},
    )


def auto_snr(noiseless: np.ndarray, sigma: float) -> float:
    """FLUX_AUTO / FLUXERR_AUTO of the central galaxy of a noiseless image at noise `sigma`: isophote
    at 3 sigma, Kron factor 2.5 (minimum 3.5), as the paper's SE configuration measures it."""
    import sep

    img = np.ascontiguousarray(noiseless, dtype=np.float64)
    objs = sep.extract(img, 3.0, err=sigma, minarea=5, deblend_cont=1.0)
    if len(objs) == 0:
        return 1e-3
    c = (img.shape[0] - 1) / 2.0
    o = objs[int(np.argmin(np.hypot(objs["x"] - c, objs["y"] - c)))]
    a = [np.array([o[k]], dtype=np.float64) for k in ("x", "y", "a", "b", "theta")]
    a[4] = np.clip(a[4], -np.pi / 2 + 1e-7, np.pi / 2 - 1e-7)
    kr, _ = sep.kron_radius(img, *a, np.array([6.0]))
    r = max(2.5 * float(kr[0]), 3.5)
    flux, _, _ = sep.sum_ellipse(img, *a, np.array([r]), subpix=1)
    mask = np.zeros(img.shape, dtype=bool)
    sep.mask_ellipse(mask, a[0], a[1], a[2], a[3], a[4], r=r)
    return float(flux[0]) / (sigma * np.sqrt(np.count_nonzero(mask)))


def render_set(seed: int, count: int, **kwargs) -> list[Cutout]:
    """`count` cutouts from one seed (same seed, same cutouts)."""
    rng = np.random.default_rng(seed)
    return [render_cutout(rng, **kwargs) for _ in range(count)]


def write_fits(image: np.ndarray, path: Path) -> Path:
    """Write an image as a primary-HDU FITS file (big-endian float32, as Source Extractor reads it)."""
    from astropy.io import fits

    fits.PrimaryHDU(np.asarray(image, dtype=np.float32)).writeto(path, overwrite=True)
    return path
