"""From per-band cutout FITS files to the dataset's image cube (paper section 3.3).

Each band is decoded (big-endian to native), placed on a SIZE x SIZE float32 grid so that the
galaxy's pixel lands on the centre (63, 63), and stacked as (5, SIZE, SIZE) in g, r, i, z, y order.
Pixels the cutout did not cover (a patch edge, or a cutout smaller than the grid) are zero, as in
the original build, and flagged PADDED in a per-pixel flag plane; non-finite pixels are zeroed and
flagged NONFINITE. The 64 x 64 images are the central crop.

Also here: the cutout cache format (one small tar of FITS files per galaxy). A band is a Stamp
(its planes and the galaxy's pixel in them) between the two: read from the service's FITS file
(read_stamp), or cut from a coadd mirror (galaxiesml.coadds) with the galaxy placed by the patch's
WCS, which skips a FITS file's writing and reading (~20 ms a band, more than the morphology);
both are placed on the grid by place_stamp.
"""
from __future__ import annotations

import io
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from galaxiesml.hsc.cutout_client import GalaxyCutouts, Target
from galaxiesml.hsc.format import FILTERS
from galaxiesml.schema import BANDS

SIZE = 127
CENTRE = SIZE // 2  # 63: the galaxy's pixel
CROP = 64

PADDED = 1
NONFINITE = 2


class CutoutError(ValueError):
    """A band's cutout cannot give an image of the galaxy (its `reason` is a short code)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def in_band(self, band: str) -> "CutoutError":
        """The same error, its detail naming the band it happened in."""
        return CutoutError(self.reason, f"{band} band: {self.detail}")


@dataclass
class GalaxyImage:
    """A galaxy's image cube (5, SIZE, SIZE) float32, its flag plane (uint8, PADDED | NONFINITE),
    the filter each band came from, and the HSC mask / variance planes when they were asked for."""

    object_id: int
    image: np.ndarray
    flags: np.ndarray
    filters: tuple[str, ...]
    hsc_mask: np.ndarray | None = None
    variance: np.ndarray | None = None


def place_on_grid(data: np.ndarray, x: float, y: float, size: int = SIZE, fill: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """`data` shifted so that pixel (round(x), round(y)) (zero-based) is the grid's centre;
    returns (grid, covered) where `covered` marks the pixels that came from `data`."""
    half = size // 2
    cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    grid = np.full((size, size), fill, dtype=data.dtype)
    covered = np.zeros((size, size), bool)
    ny, nx = data.shape
    x0, y0 = cx - half, cy - half  # data coordinates of the grid's corner
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + size, nx), min(y0 + size, ny)
    if sx1 > sx0 and sy1 > sy0:
        grid[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = data[sy0:sy1, sx0:sx1]
        covered[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = True
    return grid, covered


def _native(a: np.ndarray, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("="))


@dataclass(frozen=True)
class Stamp:
    """One band's pixels as cut, before they go on the grid: the planes ("image", and "mask" and
    "variance" where kept) and the galaxy's zero-based pixel position (x, y) in them."""

    planes: dict[str, np.ndarray]
    x: float
    y: float


@contextmanager
def _band(band: str) -> Iterator[None]:
    """A CutoutError raised inside names its band."""
    try:
        yield
    except CutoutError as exc:
        raise exc.in_band(band) from exc


def read_stamp(data: bytes, ra: float, dec: float) -> Stamp:
    """A cutout FITS file (the service's: an HDU per plane, its EXTTYPE naming it) -> its Stamp,
    the galaxy placed by the file's WCS. Raises CutoutError when it holds no 2-d image."""
    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            planes = {}
            for hdu in hdul[1:] if len(hdul) > 1 else hdul:
                kind = str(hdu.header.get("EXTTYPE", "IMAGE")).lower()
                if hdu.data is not None and kind not in planes:
                    planes[kind] = (np.asarray(hdu.data), hdu.header)
    except Exception as exc:  # astropy raises many kinds for a damaged file
        raise CutoutError("corrupt_fits", f"unreadable FITS ({type(exc).__name__})") from exc
    if "image" not in planes or planes["image"][0].ndim != 2 or 0 in planes["image"][0].shape:
        raise CutoutError("corrupt_fits", "no 2-d image plane")
    x, y = WCS(planes["image"][1]).world_to_pixel_values(ra, dec)
    return Stamp({kind: plane for kind, (plane, _) in planes.items()}, float(x), float(y))


def place_stamp(stamp: Stamp, size: int = SIZE) -> dict[str, np.ndarray]:
    """A Stamp -> {"image", "flags"[, "mask", "variance"]} on the size x size grid, the galaxy's
    pixel at its centre. Raises CutoutError when the stamp is larger than the grid or the galaxy
    is not on it."""
    image = stamp.planes["image"]
    ny, nx = image.shape
    if ny > size + 2 or nx > size + 2:
        raise CutoutError("wrong_size", f"cutout of {nx} x {ny} px is larger than the {size} px grid")
    x, y = stamp.x, stamp.y
    if not (-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
        raise CutoutError("off_cutout", f"the galaxy falls at pixel ({x:.1f}, {y:.1f}) outside the {nx} x {ny} cutout")
    grid, covered = place_on_grid(_native(image, np.float32), x, y, size)
    flags = np.where(covered, 0, PADDED).astype(np.uint8)
    bad = ~np.isfinite(grid)
    grid[bad] = 0
    flags[bad] |= NONFINITE
    out = {"image": grid, "flags": flags}
    if "mask" in stamp.planes:
        out["mask"] = place_on_grid(_native(stamp.planes["mask"], np.int32), x, y, size)[0]
    if "variance" in stamp.planes:
        out["variance"] = place_on_grid(_native(stamp.planes["variance"], np.float32), x, y, size)[0]
    return out


def decode_band(data: bytes, ra: float, dec: float, size: int = SIZE) -> dict[str, np.ndarray]:
    """One band's cutout FITS bytes -> {"image", "flags"[, "mask", "variance"]} on the grid."""
    return place_stamp(read_stamp(data, ra, dec), size)


def stack_stamps(
    object_id: int, stamps: dict[str, Stamp], filters: Sequence[str], size: int = SIZE, bands: Sequence[str] = BANDS
) -> GalaxyImage:
    """Place each band's stamp on the grid and stack them; raises CutoutError naming the band."""
    placed = []
    for b in bands:
        with _band(b):
            placed.append(place_stamp(stamps[b], size))
    stack = lambda key: np.stack([d[key] for d in placed]) if all(key in d for d in placed) else None  # noqa: E731
    return GalaxyImage(
        object_id=object_id,
        image=stack("image"),
        flags=stack("flags"),
        filters=tuple(filters),
        hsc_mask=stack("mask"),
        variance=stack("variance"),
    )


def galaxy_image(cutouts: GalaxyCutouts, size: int = SIZE, bands: Sequence[str] = BANDS) -> GalaxyImage:
    """Stack a galaxy's fetched bands; raises CutoutError naming the first band that is missing or bad."""
    missing = [b for b in bands if b not in cutouts.cutouts]
    if missing:
        b = missing[0]
        if b in cutouts.failed:
            raise CutoutError("fetch_failed", cutouts.failed[b]).in_band(b)
        raise CutoutError("no_coverage", f"no {', '.join(missing)} coverage at this position")
    stamps = {}
    for b in bands:
        with _band(b):
            stamps[b] = read_stamp(cutouts.cutouts[b], cutouts.ra, cutouts.dec)
    filters = tuple(cutouts.filters.get(b, FILTERS[b]) for b in bands)
    return stack_stamps(cutouts.object_id, stamps, filters, size, bands)


#: How the morphology sees the pixels a cutout did not cover: "zero", as the dataset stores them
#: and as the paper's Source Extractor saw its 127 x 127 images (the default: it reproduces SE on
#: them); "missing", as no data, so that the background and its noise come from covered pixels alone.
PADDED_PIXELS = ("zero", "missing")


def measured_image(image: np.ndarray, flags: np.ndarray, padded_pixels: str = "zero") -> np.ndarray:
    """The image the morphology measures: the stored one, or with its padded pixels NaN (missing)."""
    if padded_pixels not in PADDED_PIXELS:
        raise ValueError(f"padded pixels are measured as one of {PADDED_PIXELS}, not {padded_pixels!r}")
    return image if padded_pixels == "zero" else np.where(flags & PADDED, np.float32(np.nan), image)


def central_crop(cube: np.ndarray, size: int = CROP) -> np.ndarray:
    """The central size x size pixels of (..., N, N) images, keeping the centre pixel's place
    (for 127 -> 64: pixels 31..94, so pixel 63 lands at 32)."""
    n = cube.shape[-1]
    start = n // 2 - size // 2
    return cube[..., start : start + size, start : start + size]


# --------------------------------------------------------------------------- cache

MISSING_MEMBER = "missing.txt"


def cacheable(cutouts: GalaxyCutouts) -> bool:
    """Whether the service's answer is final: every band fetched or known to have no coverage
    (a band that failed after retries is asked again next time)."""
    return not cutouts.failed


def pack_cutouts(cutouts: GalaxyCutouts) -> bytes:
    """A galaxy's fetched cutouts as a small tar: one `<band>-<FILTER>.fits` member per band, and
    the bands without coverage in `missing.txt`."""
    buf = io.BytesIO()
    members = [
        (f"{band}-{cutouts.filters.get(band, FILTERS[band])}.fits", data)
        for band, data in sorted(cutouts.cutouts.items())
    ] + [(MISSING_MEMBER, " ".join(cutouts.missing).encode())]
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack_cutouts(data: bytes, target: Target) -> GalaxyCutouts:
    """The inverse of pack_cutouts; raises CutoutError for a damaged or incomplete cache entry (a
    tar cut at a member boundary reads without error, so the last member, missing.txt, must be
    there)."""
    out = GalaxyCutouts(target.object_id, target.ra, target.dec)
    complete = False
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if member.name == MISSING_MEMBER:
                    out.missing = data.decode().split()
                    complete = True
                    continue
                band, _, rest = member.name.partition("-")
                out.cutouts[band] = data
                out.filters[band] = rest.removesuffix(".fits")
    except (tarfile.TarError, OSError, AttributeError) as exc:
        raise CutoutError("bad_cache_entry", f"unreadable cache entry ({exc})") from exc
    if not complete:
        raise CutoutError("bad_cache_entry", f"incomplete cache entry (no {MISSING_MEMBER}, its last member)")
    return out


def cache_key(half_width: float, planes: Sequence[str]) -> str:
    """The cache folder of one kind of cutout: cutouts of another size or planes never mix."""
    return f"hw{half_width:.4f}-{'-'.join(planes)}"


def cache_name(object_id: int) -> str:
    """Where one galaxy's entry lives inside a cache folder (1,000 sub-folders)."""
    return f"{object_id % 1000:03d}/{object_id}.tar"
