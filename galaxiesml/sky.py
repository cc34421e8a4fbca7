"""A synthetic HSC PDR2 Wide sky, deterministic from a seed, rendered only where it is looked at.

Galaxies come from galaxiesml.synthetic_catalog (so a catalog export points at them) and get
Sersic profiles (index n, half-light radius shrinking with redshift, axis ratio, position angle);
fluxes are the catalog magnitudes at zero point 27. A few stars are added. Everything lives on one
TAN pixel grid at 0.168"/px (a "tract") cut into square patches; some patches, or single bands of
some patches, have no data, and in some the r or i band was observed with HSC-R2 / HSC-I2. A cutout
is rendered on request with GalSim: the sources near the box (found with a grid index), convolved
with the band's PSF, plus Gaussian noise at the HSC Wide depth drawn per 64-pixel block of the sky
from a seed made of (sky seed, band, block), so the same request gives the same pixels and two
overlapping cutouts agree where they overlap. Nothing of the sky is ever held as pixels.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import galsim
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.wcs import WCS

from galaxiesml.hsc.format import (
    BAND_OF_FILTER,
    FALLBACK_FILTERS,
    FILTERS,
    FLUXMAG0,
    MASK_PLANES,
    PIXEL_SCALE,
    RERUN,
    ZERO_POINT,
    Rounding,
    cutout_box,
    nearest_pixel,
)
from galaxiesml.schema import BANDS
from galaxiesml.synthetic_catalog import WIDE_DEPTH, Region, make_catalog, skymap_ids, write_catalog

#: Median seeing (PSF FWHM, arcsec) of HSC Wide per band.
SEEING_FWHM: dict[str, float] = dict(zip(BANDS, (0.77, 0.76, 0.58, 0.68, 0.68)))
MOFFAT_BETA = 3.5
#: Sersic indices a galaxy can have (few distinct values: GalSim tabulates each index once).
SERSIC_INDICES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
SERSIC_WEIGHTS: tuple[float, ...] = (0.1, 0.35, 0.2, 0.15, 0.1, 0.1)
#: Sersic profiles are truncated at this many half-light radii (the stated flux and radius are
#: those of the truncated profile).
TRUNCATION = 5.0
#: The PSF is truncated at this many FWHM.
PSF_TRUNCATION = 5.0
#: Side (pixels) of the sky blocks that noise is drawn for, and of the source index cells.
NOISE_BLOCK = 64
INDEX_CELL = 256
#: Stars brighter than this get a BRIGHT_OBJECT mask of BRIGHT_RADIUS pixels.
BRIGHT_STAR_MAG = 17.5
BRIGHT_RADIUS = 40
#: Default galaxy density (per square arcmin) used to size the region of make_sky.
DENSITY = 7.0
DEFAULT_CENTER = (150.0, 2.2)

_TRUTH_INPUT = (
    "kind", "object_id", "ra", "dec", "redshift", "sersic_n", "half_light_radius", "axis_ratio",
    "position_angle", *(f"mag_{b}" for b in BANDS),
)


def mag_to_flux(mag: np.ndarray | float) -> np.ndarray | float:
    """Coadd counts of an AB magnitude at zero point 27."""
    return 10 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - ZERO_POINT))


def noise_sigma(band: str, fwhm: float | None = None) -> float:
    """Per-pixel noise (counts) that makes a point source at the band's HSC Wide 5-sigma depth a
    5-sigma PSF-fit detection: for a Gaussian PSF of sigma s pixels, SNR = F / (sigma sqrt(4 pi s^2))."""
    s = (fwhm or SEEING_FWHM[band]) / 2.3548 / PIXEL_SCALE
    return float(mag_to_flux(WIDE_DEPTH[band]) / (5.0 * math.sqrt(4.0 * math.pi) * s))


@dataclass(frozen=True)
class SkyLayout:
    """The pixel grid of the sky: a TAN projection centred on (ra0, dec0), north up, east left,
    nx x ny pixels cut into patch_px squares. `empty` patches have no data; `band_gaps` lists
    (band, px, py) without data in one band; `old_filter` lists (band, px, py) whose r or i band
    was observed with HSC-R2 / HSC-I2 instead."""

    ra0: float
    dec0: float
    nx: int
    ny: int
    patch_px: int
    tract: int
    empty: frozenset[tuple[int, int]] = frozenset()
    band_gaps: frozenset[tuple[str, int, int]] = frozenset()
    old_filter: frozenset[tuple[str, int, int]] = frozenset()
    rerun: str = RERUN

    @property
    def n_patches(self) -> tuple[int, int]:
        return -(-self.nx // self.patch_px), -(-self.ny // self.patch_px)

    @cached_property
    def wcs(self) -> WCS:
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [self.ra0, self.dec0]
        w.wcs.crpix = [(self.nx + 1) / 2.0, (self.ny + 1) / 2.0]
        scale = PIXEL_SCALE / 3600.0
        w.wcs.cd = [[-scale, 0.0], [0.0, scale]]
        w.wcs.radesys = "ICRS"
        return w

    @cached_property
    def plane_headers(self) -> dict[str, fits.Header]:
        """Header templates of cutout data planes on this grid (see _plane_headers)."""
        return _plane_headers(self)

    def to_pixel(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel coordinates (pixel centres at integers) of sky positions."""
        x, y = self.wcs.wcs_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
        return np.asarray(x), np.asarray(y)

    def patch_bounds(self, px: int, py: int) -> tuple[int, int, int, int]:
        """(x0, x1, y0, y1) half-open pixel box of a patch."""
        p = self.patch_px
        return px * p, min((px + 1) * p, self.nx), py * p, min((py + 1) * p, self.ny)

    def filter_at(self, band: str, px: int, py: int) -> str | None:
        """The filter that has data for `band` in patch (px, py); None when nothing does."""
        npx, npy = self.n_patches
        if not (0 <= px < npx and 0 <= py < npy) or (px, py) in self.empty or (band, px, py) in self.band_gaps:
            return None
        if (band, px, py) in self.old_filter:
            return FALLBACK_FILTERS[FILTERS[band]]
        return FILTERS[band]

    def covers(self, filter_name: str, px: int, py: int) -> bool:
        """Whether patch (px, py) has data in this filter."""
        band = BAND_OF_FILTER.get(filter_name)
        return band is not None and self.filter_at(band, px, py) == filter_name

    def coverage(self, filter_name: str, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Boolean (y1-y0, x1-x0) array: which pixels of a box have data in this filter."""
        cols = np.arange(x0, x1) // self.patch_px
        rows = np.arange(y0, y1) // self.patch_px
        inside = ((np.arange(y0, y1) >= 0) & (np.arange(y0, y1) < self.ny))[:, None] & (
            (np.arange(x0, x1) >= 0) & (np.arange(x0, x1) < self.nx)
        )[None, :]
        out = np.zeros((y1 - y0, x1 - x0), bool)
        for py in np.unique(rows):
            for px in np.unique(cols):
                if self.covers(filter_name, int(px), int(py)):
                    out[np.ix_(rows == py, cols == px)] = True
        return out & inside

    def clip(
        self, filter_name: str, xc: int, yc: int, box: tuple[int, int, int, int]
    ) -> tuple[int, int, int, int] | None:
        """The box das_cutout returns for a request centred on pixel (xc, yc): None when the centre
        has no data in this filter; otherwise cut short at the tract edge and at every side whose
        neighbouring patch has no data (pixels of uncovered diagonal patches stay, flagged NO_DATA)."""
        if not (0 <= xc < self.nx and 0 <= yc < self.ny):
            return None
        p = self.patch_px
        px, py = xc // p, yc // p
        if not self.covers(filter_name, px, py):
            return None
        x0, x1, y0, y1 = box
        pb = self.patch_bounds(px, py)
        if not self.covers(filter_name, px - 1, py):
            x0 = max(x0, pb[0])
        if not self.covers(filter_name, px + 1, py):
            x1 = min(x1, pb[1])
        if not self.covers(filter_name, px, py - 1):
            y0 = max(y0, pb[2])
        if not self.covers(filter_name, px, py + 1):
            y1 = min(y1, pb[3])
        return max(x0, 0), min(x1, self.nx), max(y0, 0), min(y1, self.ny)

    def skymap_id(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """HSC-style skymap ids (tract * 10000 + patch_x * 100 + patch_y) of pixel positions: the
        patch of the pixel nearest each, as the cutout stand-in decides coverage."""
        px = np.floor(np.floor(np.asarray(x) + 0.5) / self.patch_px).astype(np.int64)  # as nearest_pixel
        py = np.floor(np.floor(np.asarray(y) + 0.5) / self.patch_px).astype(np.int64)
        return np.int64(self.tract) * 10000 + np.clip(px, 0, 99) * 100 + np.clip(py, 0, 99)


def make_layout(
    region: Region,
    seed: int = 0,
    patch_px: int = 4000,
    empty_share: float = 0.08,
    band_gap_share: float = 0.03,
    old_filter_share: float = 0.05,
) -> SkyLayout:
    """A layout covering `region`, with a seeded share of empty patches, of patches missing one
    band, and of patches whose r or i band was taken with the old filter."""
    ra0 = (region.ra_min + region.ra_max) / 2.0
    dec0 = (region.dec_min + region.dec_max) / 2.0
    nx = int(math.ceil((region.ra_max - region.ra_min) * math.cos(math.radians(dec0)) * 3600 / PIXEL_SCALE))
    ny = int(math.ceil((region.dec_max - region.dec_min) * 3600 / PIXEL_SCALE))
    npx, npy = -(-nx // patch_px), -(-ny // patch_px)
    rng = np.random.default_rng([seed, 3])
    empty = rng.random((npx, npy)) < empty_share
    gaps = rng.random((len(BANDS), npx, npy)) < band_gap_share
    old = rng.random((2, npx, npy)) < old_filter_share
    tract = int(skymap_ids(np.array([ra0]), np.array([dec0]))[0][0])
    return SkyLayout(
        ra0=ra0,
        dec0=dec0,
        nx=nx,
        ny=ny,
        patch_px=patch_px,
        tract=tract,
        empty=frozenset((int(a), int(b)) for a, b in zip(*np.nonzero(empty))),
        band_gaps=frozenset((BANDS[k], int(a), int(b)) for k, a, b in zip(*np.nonzero(gaps))),
        old_filter=frozenset((("r", "i")[k], int(a), int(b)) for k, a, b in zip(*np.nonzero(old))),
    )


def region_for(n_galaxies: int, density: float = DENSITY, center: tuple[float, float] = DEFAULT_CENTER) -> Region:
    """A square region holding `n_galaxies` at `density` per square arcmin."""
    side_deg = math.sqrt(max(n_galaxies, 1) / density) / 60.0
    ra_half = side_deg / 2.0 / math.cos(math.radians(center[1]))
    return Region(center[0] - ra_half, center[0] + ra_half, center[1] - side_deg / 2, center[1] + side_deg / 2)


def galaxy_truth(galaxies: pa.Table, seed: int = 0) -> pa.Table:
    """Truth rows for catalog galaxies: their magnitudes (an invalid catalog magnitude is replaced
    by the mean of the galaxy's valid ones) and seeded Sersic shapes, smaller at higher redshift."""
    n = galaxies.num_rows
    rng = np.random.default_rng([seed, 4])
    z = np.clip(galaxies.column("specz_redshift").to_numpy(), 0.01, 4.0)
    mags = np.stack([galaxies.column(f"{b}_cmodel_mag").to_numpy(zero_copy_only=False) for b in BANDS])
    valid = np.isfinite(mags) & (mags > 10) & (mags < 35)
    fill = np.nanmean(np.where(valid, mags, np.nan), axis=0) if n else np.zeros(0)
    mags = np.where(valid, mags, np.where(np.isfinite(fill), fill, 24.0))
    hlr = np.clip(1.6 / (1.0 + z) * np.exp(rng.normal(0.0, 0.35, n)), 0.15, 2.5)
    cols = {
        "kind": pa.array(["galaxy"] * n),
        "object_id": galaxies.column("object_id"),
        "ra": galaxies.column("ra"),
        "dec": galaxies.column("dec"),
        "redshift": galaxies.column("specz_redshift"),
        "sersic_n": rng.choice(SERSIC_INDICES, n, p=SERSIC_WEIGHTS),
        "half_light_radius": np.round(hlr, 4),
        "axis_ratio": np.round(rng.uniform(0.3, 1.0, n), 4),
        "position_angle": np.round(rng.uniform(0.0, 180.0, n), 3),
        **{f"mag_{b}": mags[k] for k, b in enumerate(BANDS)},
    }
    return pa.table(cols)


def star_truth(n: int, region: Region, seed: int = 0) -> pa.Table:
    """`n` stars spread over `region`, r = 16 to 23, with mild colours."""
    rng = np.random.default_rng([seed, 5])
    r = rng.uniform(16.0, 23.0, n)
    colour = rng.normal(0.0, 0.3, n)
    offsets = dict(zip(BANDS, (0.6, 0.0, -0.25, -0.35, -0.4)))
    return pa.table(
        {
            "kind": pa.array(["star"] * n),
            "object_id": pa.array([None] * n, pa.int64()),
            "ra": rng.uniform(region.ra_min, region.ra_max, n),
            "dec": rng.uniform(region.dec_min, region.dec_max, n),
            "redshift": pa.array([None] * n, pa.float64()),
            "sersic_n": np.full(n, np.nan),
            "half_light_radius": np.zeros(n),
            "axis_ratio": np.ones(n),
            "position_angle": np.zeros(n),
            **{f"mag_{b}": r + offsets[b] * (1.0 + colour) for b in BANDS},
        }
    )


_EXTTYPES = ("IMAGE", "MASK", "VARIANCE")


def _plane_headers(layout: SkyLayout) -> dict[str, fits.Header]:
    """Header templates of the three data planes on this layout (WCS, EXTTYPE, MP_* on the mask):
    built once, since astropy header building costs more than rendering a small stamp."""
    out = {}
    for exttype in _EXTTYPES:
        h = layout.wcs.to_header()
        h["EXTTYPE"] = exttype
        h["LTV1"] = 0
        h["LTV2"] = 0
        if exttype == "MASK":
            for name, bit in MASK_PLANES.items():
                h.append(fits.Card(f"HIERARCH MP_{name}", bit))
        out[exttype] = h
    return out


@dataclass(frozen=True)
class Cutout:
    """Rendered pixels of one filter over the half-open sky box [x0, x0 + nx) x [y0, y0 + ny)."""

    filter: str
    layout: SkyLayout
    x0: int
    y0: int
    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    bg_var: float
    psf_id: int

    @property
    def tract(self) -> int:
        return self.layout.tract

    @property
    def wcs(self) -> WCS:
        """The cutout's WCS: the layout's, shifted to the cutout origin."""
        w = self.layout.wcs.deepcopy()
        w.wcs.crpix = w.wcs.crpix - np.array([self.x0, self.y0], float)
        return w

    def hdulist(self, image: bool = True, mask: bool = True, variance: bool = True) -> fits.HDUList:
        """The cutout as das_cutout writes it: a header-only HDU0 (FLUXMAG0, BGMEAN, BGVAR, PSF_ID,
        FILTER, variance_scale) then the asked-for planes in image, mask, variance order, each
        with the WCS and an EXTTYPE card and no EXTNAME; the mask carries MP_* plane cards."""
        primary = fits.PrimaryHDU()
        h = primary.header
        h["FLUXMAG0"] = (FLUXMAG0, "flux of a zero-magnitude source (counts)")
        h["BGMEAN"] = (0.0, "mean of the subtracted background")
        h["BGVAR"] = (self.bg_var, "variance of the background noise")
        h["PSF_ID"] = (self.psf_id, "id of the PSF model")
        h["FILTER"] = (self.filter, "filter name")
        h.append(fits.Card("HIERARCH variance_scale", 1.0, "variance plane to pixel noise scale"))
        templates = self.layout.plane_headers
        crpix1, crpix2 = self.layout.wcs.wcs.crpix
        hdus: list[fits.ImageHDU] = []
        planes = (
            (image, self.image.astype(np.float32, copy=False)),
            (mask, self.mask.astype(np.int32, copy=False)),
            (variance, self.variance.astype(np.float32, copy=False)),
        )
        for (wanted, data), exttype in zip(planes, _EXTTYPES):
            if not wanted:
                continue
            header = templates[exttype].copy()
            header["CRPIX1"] = crpix1 - self.x0
            header["CRPIX2"] = crpix2 - self.y0
            header["LTV1"] = -self.x0
            header["LTV2"] = -self.y0
            hdus.append(fits.ImageHDU(data=data, header=header))
        return fits.HDUList([primary, *hdus])

    def fits_bytes(self, image: bool = True, mask: bool = False, variance: bool = False) -> bytes:
        """hdulist() serialised to bytes (FITS data is big-endian)."""
        buf = io.BytesIO()
        self.hdulist(image, mask, variance).writeto(buf, output_verify="ignore")
        return buf.getvalue()


def _read_psf_cube(path: Path) -> dict[str, galsim.GSObject]:
    with fits.open(path) as hdul:
        cube = np.asarray(hdul[0].data, dtype=np.float64)
    return {
        b: galsim.InterpolatedImage(galsim.Image(cube[k] / cube[k].sum(), scale=PIXEL_SCALE), flux=1.0)
        for k, b in enumerate(BANDS)
    }


class Sky:
    """Sources on a layout, rendered on demand. `truth` needs the columns kind, object_id, ra, dec,
    redshift, sersic_n, half_light_radius (arcsec), axis_ratio, position_angle (degrees from the +x
    pixel axis towards +y) and mag_g..mag_y; the sky adds x, y, flux_*, patch_x/patch_y and
    filter_* (the filter covering the source's centre in each band, "" if none). `psf` is "moffat"
    (HSC Wide median seeing per band) or the path of a FITS cube of five PSF images (g..y)."""

    def __init__(self, truth: pa.Table, layout: SkyLayout, seed: int = 0, psf: str | Path = "moffat"):
        self.layout = layout
        self.seed = seed
        ra = truth.column("ra").to_numpy()
        dec = truth.column("dec").to_numpy()
        x, y = layout.to_pixel(ra, dec)
        self._x, self._y = x, y
        self._star = np.asarray(truth.column("kind").to_pylist()) == "star"
        self._n = truth.column("sersic_n").to_numpy(zero_copy_only=False)
        self._hlr = truth.column("half_light_radius").to_numpy()
        self._q = truth.column("axis_ratio").to_numpy()
        self._beta = truth.column("position_angle").to_numpy()
        self._mag = {b: truth.column(f"mag_{b}").to_numpy() for b in BANDS}
        self._flux = {b: mag_to_flux(self._mag[b]) for b in BANDS}
        if str(psf) == "moffat":
            self.psf_fwhm = dict(SEEING_FWHM)
            self.psfs = {
                b: galsim.Moffat(beta=MOFFAT_BETA, fwhm=f, trunc=PSF_TRUNCATION * f) for b, f in SEEING_FWHM.items()
            }
        else:
            self.psfs = _read_psf_cube(Path(psf))
            self.psf_fwhm = {b: self.psfs[b].calculateFWHM() for b in BANDS}
        psf_radius = PSF_TRUNCATION * max(self.psf_fwhm.values()) / 2.0
        galaxy_r = np.where(self._star, 0.0, TRUNCATION * self._hlr / np.sqrt(np.clip(self._q, 0.05, 1.0)))
        self._radius = np.ceil((galaxy_r + psf_radius) / PIXEL_SCALE).astype(np.int64) + 2
        self.sigma = {b: noise_sigma(b, self.psf_fwhm[b]) for b in BANDS}
        self._build_index()
        px = np.floor(x / layout.patch_px).astype(np.int64)
        py = np.floor(y / layout.patch_px).astype(np.int64)
        xi, yi = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
        inside = (xi >= 0) & (xi < layout.nx) & (yi >= 0) & (yi < layout.ny)
        extra = {"x": x, "y": y, "patch_x": px, "patch_y": py}
        for b in BANDS:
            extra[f"flux_{b}"] = self._flux[b]
        for b in BANDS:
            extra[f"filter_{b}"] = pa.array(
                [
                    (layout.filter_at(b, int(a), int(c)) or "") if ok else ""
                    for a, c, ok in zip(xi // layout.patch_px, yi // layout.patch_px, inside)
                ],
                pa.string(),
            )
        base = truth.select(list(_TRUTH_INPUT))
        for name, col in extra.items():
            base = base.append_column(name, pa.array(col) if not isinstance(col, pa.Array) else col)
        self.truth = base

    # -- spatial index -------------------------------------------------------------------------
    def _build_index(self) -> None:
        c = INDEX_CELL
        self._ncx = self.layout.nx // c + 3
        self._ncy = self.layout.ny // c + 3
        cx = np.clip(np.floor(self._x / c).astype(np.int64) + 1, 0, self._ncx - 1)
        cy = np.clip(np.floor(self._y / c).astype(np.int64) + 1, 0, self._ncy - 1)
        key = cy * self._ncx + cx
        self._order = np.argsort(key, kind="stable")
        self._keys = key[self._order]
        self._max_radius = int(self._radius.max()) if len(self._radius) else 0

    def sources_near(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Indices (into truth) of the sources whose stamps overlap the half-open box."""
        m, c = self._max_radius, INDEX_CELL
        cx0 = int(np.clip(math.floor((x0 - m) / c) + 1, 0, self._ncx - 1))
        cx1 = int(np.clip(math.floor((x1 + m) / c) + 1, 0, self._ncx - 1))
        cy0 = int(np.clip(math.floor((y0 - m) / c) + 1, 0, self._ncy - 1))
        cy1 = int(np.clip(math.floor((y1 + m) / c) + 1, 0, self._ncy - 1))
        parts = []
        for cy in range(cy0, cy1 + 1):
            lo = np.searchsorted(self._keys, cy * self._ncx + cx0, "left")
            hi = np.searchsorted(self._keys, cy * self._ncx + cx1, "right")
            parts.append(self._order[lo:hi])
        idx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        r = self._radius[idx]
        xs, ys = self._x[idx], self._y[idx]
        near = (xs + r >= x0) & (xs - r < x1) & (ys + r >= y0) & (ys - r < y1)
        return np.sort(idx[near])

    # -- rendering -----------------------------------------------------------------------------
    def profile(self, i: int, band: str) -> galsim.GSObject:
        """The PSF-convolved GalSim profile of source `i` in `band`."""
        flux = float(self._flux[band][i])
        psf = self.psfs[band]
        if self._star[i]:
            return psf.withFlux(flux)
        hlr = float(self._hlr[i])
        gal = galsim.Sersic(float(self._n[i]), half_light_radius=hlr, flux=flux, trunc=TRUNCATION * hlr)
        gal = gal.shear(q=float(self._q[i]), beta=float(self._beta[i]) * galsim.degrees)
        return galsim.Convolve(gal, psf)

    def model(self, band: str, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Noise-free float32 pixels of the box [x0, x1) x [y0, y1) in `band`."""
        arr = np.zeros((y1 - y0, x1 - x0), np.float32)
        image = galsim.ImageF(arr, xmin=x0 + 1, ymin=y0 + 1, scale=PIXEL_SCALE)
        for i in self.sources_near(x0, x1, y0, y1):
            x, y, r = self._x[i], self._y[i], int(self._radius[i])
            stamp = galsim.BoundsI(int(x) - r + 1, int(x) + r + 1, int(y) - r + 1, int(y) + r + 1) & image.bounds
            if not stamp.isDefined():
                continue
            self.profile(int(i), band).drawImage(
                image=image[stamp], center=galsim.PositionD(x + 1.0, y + 1.0), add_to_image=True
            )
        return arr

    def noise(self, band: str, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Gaussian sky noise of the box, drawn per NOISE_BLOCK block from (seed, band, block)."""
        out = np.empty((y1 - y0, x1 - x0), np.float32)
        b = NOISE_BLOCK
        k = BANDS.index(band)
        for by in range(y0 // b, (y1 - 1) // b + 1):
            for bx in range(x0 // b, (x1 - 1) // b + 1):
                rng = np.random.default_rng([self.seed, 6, k, bx, by])
                block = rng.standard_normal((b, b), dtype=np.float32)
                ya, yb = max(y0, by * b), min(y1, (by + 1) * b)
                xa, xb = max(x0, bx * b), min(x1, (bx + 1) * b)
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = block[ya - by * b : yb - by * b, xa - bx * b : xb - bx * b]
        return out * np.float32(self.sigma[band])

    def render(self, filter_name: str, x0: int, x1: int, y0: int, y1: int, noise: bool = True) -> Cutout:
        """Image, mask and variance of a sky box in one filter (pixels without data are 0, with
        infinite variance and the NO_DATA bit)."""
        band = BAND_OF_FILTER[filter_name]
        model = self.model(band, x0, x1, y0, y1)
        covered = self.layout.coverage(filter_name, x0, x1, y0, y1)
        sigma = self.sigma[band]
        image = model + self.noise(band, x0, x1, y0, y1) if noise else model
        image[~covered] = 0.0
        mask = np.zeros(model.shape, np.int32)
        mask[model > 2.0 * sigma] |= 1 << MASK_PLANES["DETECTED"]
        # a bright star's mask reaches BRIGHT_RADIUS, further than its stamp: look that far, so that
        # a pixel's mask does not depend on the box it is rendered in
        b = BRIGHT_RADIUS
        for i in self.sources_near(x0 - b, x1 + b, y0 - b, y1 + b):
            if self._star[i] and self._mag[band][i] < BRIGHT_STAR_MAG:
                yy, xx = np.ogrid[y0:y1, x0:x1]
                mask[(xx - self._x[i]) ** 2 + (yy - self._y[i]) ** 2 < BRIGHT_RADIUS**2] |= 1 << MASK_PLANES["BRIGHT_OBJECT"]
        mask[~covered] = 1 << MASK_PLANES["NO_DATA"]
        variance = np.where(covered, np.float32(sigma**2), np.float32(np.inf)).astype(np.float32)
        px, py = (x0 + x1) // 2 // self.layout.patch_px, (y0 + y1) // 2 // self.layout.patch_px
        psf_id = 1_000_000 * BANDS.index(band) + 1000 * int(px) + int(py)
        return Cutout(filter_name, self.layout, x0, y0, image, mask, variance, sigma**2, psf_id)

    def cutout_box(
        self, filter_name: str, ra: float, dec: float, half_width: float, half_height: float | None = None,
        rounding: Rounding = "floor",
    ) -> tuple[int, int, int, int] | None:
        """The pixel box das_cutout returns for a request (half sizes in arcsec) around the pixel
        nearest (ra, dec), cut short at coverage edges; None when the centre has no data in this
        filter. Its size is rounded as `rounding` says (see hsc.format.cutout_box)."""
        x, y = self.layout.to_pixel(np.array([ra]), np.array([dec]))
        if not (np.isfinite(x[0]) and np.isfinite(y[0])):
            return None  # on the far side of the projection
        box = cutout_box(float(x[0]), float(y[0]), half_width, half_height, rounding)
        return self.layout.clip(filter_name, nearest_pixel(float(x[0])), nearest_pixel(float(y[0])), box)

    def cutout(
        self, filter_name: str, ra: float, dec: float, half_width: float, half_height: float | None = None,
        noise: bool = True, rounding: Rounding = "floor",
    ) -> Cutout | None:
        """A cutout as das_cutout would give it, or None when the sky has no data there."""
        if filter_name not in BAND_OF_FILTER:
            return None
        box = self.cutout_box(filter_name, ra, dec, half_width, half_height, rounding)
        return None if box is None else self.render(filter_name, *box, noise=noise)

    # -- files ---------------------------------------------------------------------------------
    def write_patches(
        self, out_dir: str | Path, region: Region | None = None, bands: tuple[str, ...] = BANDS, border: int = 0,
        catalogs: bool = False,
    ) -> list[Path]:
        """Write the coadd patches (image, mask, variance) overlapping `region` (all if None) as
        <out_dir>/deepCoadd-results/<FILTER>/<tract>/<px>,<py>/calexp-<FILTER>-<tract>-<px>,<py>.fits,
        the layout of the HSC data release; a patch is written in the filter that has data there.
        With `border`, each file holds its patch and `border` pixels of its neighbours on every
        side (trimmed at the tract's edge), as the release's 100 px borders do; with `catalogs`, a
        small measurement catalog (a FITS table, `meas-...`) sits beside each file, as in the
        release's patch folders, so a reader must not take every FITS file there for an image."""
        out_dir = Path(out_dir)
        npx, npy = self.layout.n_patches
        ranges = (0, npx - 1, 0, npy - 1)
        if region is not None:
            xs, ys = self.layout.to_pixel(
                np.array([region.ra_min, region.ra_max, region.ra_min, region.ra_max]),
                np.array([region.dec_min, region.dec_min, region.dec_max, region.dec_max]),
            )
            p = self.layout.patch_px
            ranges = (
                max(0, int(xs.min() // p)), min(npx - 1, int(xs.max() // p)),
                max(0, int(ys.min() // p)), min(npy - 1, int(ys.max() // p)),
            )
        written = []
        for px in range(ranges[0], ranges[1] + 1):
            for py in range(ranges[2], ranges[3] + 1):
                x0, x1, y0, y1 = self.layout.patch_bounds(px, py)
                box = (max(x0 - border, 0), min(x1 + border, self.layout.nx), max(y0 - border, 0), min(y1 + border, self.layout.ny))
                for band in bands:
                    filt = self.layout.filter_at(band, px, py)
                    if filt is None:
                        continue
                    name = f"{px},{py}"
                    folder = out_dir / "deepCoadd-results" / filt / str(self.layout.tract) / name
                    folder.mkdir(parents=True, exist_ok=True)
                    path = folder / f"calexp-{filt}-{self.layout.tract}-{name}.fits"
                    self.render(filt, *box).hdulist().writeto(path, overwrite=True)
                    written.append(path)
                    if catalogs:
                        inner = (self._x >= x0) & (self._x < x1) & (self._y >= y0) & (self._y < y1)
                        table = fits.BinTableHDU.from_columns(
                            [fits.Column("id", "K", array=np.flatnonzero(inner)), fits.Column("x", "D", array=self._x[inner])]
                        )
                        fits.HDUList([fits.PrimaryHDU(), table]).writeto(folder / f"meas-{filt}-{self.layout.tract}-{name}.fits", overwrite=True)
        return written


def make_sky(
    n_galaxies: int,
    seed: int = 0,
    region: Region | None = None,
    n_stars: int | None = None,
    patch_px: int = 4000,
    psf: str | Path = "moffat",
    duplicate_share: float = 0.64,
    empty_share: float = 0.08,
    band_gap_share: float = 0.03,
    old_filter_share: float = 0.05,
) -> tuple[Sky, pa.Table]:
    """(sky of `n_galaxies` unique galaxies plus stars, the catalog rows that point at them).

    The rows are synthetic_catalog.make_catalog's (duplicates and cut failures included), with
    skymap_id set from the sky's tract and patches. `region` defaults to a square at the HSC
    Wide-like density DENSITY; `n_stars` to one star per 50 galaxies (at least 3)."""
    region = region or region_for(n_galaxies)
    n_rows = max(1, int(n_galaxies / (1.0 - duplicate_share)) - 2)
    while max(1, int(round(n_rows * (1 - duplicate_share)))) < n_galaxies:
        n_rows += 1
    rows, galaxies = make_catalog(n_rows, seed, region, duplicate_share)
    layout = make_layout(region, seed, patch_px, empty_share, band_gap_share, old_filter_share)
    stars = star_truth(max(3, n_galaxies // 50) if n_stars is None else n_stars, region, seed)
    sky = Sky(pa.concat_tables([galaxy_truth(galaxies, seed), stars], promote_options="default"), layout, seed, psf)
    x, y = layout.to_pixel(rows.column("ra").to_numpy(), rows.column("dec").to_numpy())
    rows = rows.set_column(rows.schema.get_field_index("skymap_id"), "skymap_id", pa.array(layout.skymap_id(x, y)))
    return sky, rows


def write_sky(sky: Sky, rows: pa.Table, out_dir: str | Path) -> dict[str, Path]:
    """Write the truth table (truth.parquet) and the catalog export (catalog.csv) of a sky."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_path = out_dir / "truth.parquet"
    pq.write_table(sky.truth, truth_path)
    return {"truth": truth_path, "catalog": write_catalog(rows, out_dir / "catalog.csv")}
