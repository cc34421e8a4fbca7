"""Facts about HSC PDR2 cutout files and replies that the clients, the stand-ins and the synthetic
sky all rely on: filter names, zero point, pixel scale, mask planes and tar member names.
Kept in one place so the three cannot drift apart (see docs/hsc-services.md)."""
from __future__ import annotations

import math
import re
from typing import Literal, NamedTuple, Union

from galaxiesml.schema import BANDS

#: Coadd pixel scale in arcsec per pixel.
PIXEL_SCALE: float = 0.168
#: AB zero point of coadd counts.
ZERO_POINT: float = 27.0
FLUXMAG0: float = 10 ** (0.4 * ZERO_POINT)
RERUN: str = "pdr2_wide"

#: The filter name the archive uses for each band, in g, r, i, z, y order.
FILTERS: dict[str, str] = {b: f"HSC-{b.upper()}" for b in BANDS}
#: Older filters some fields were observed with; clients retry a missing r or i cutout with them.
FALLBACK_FILTERS: dict[str, str] = {"HSC-R": "HSC-R2", "HSC-I": "HSC-I2"}
#: Band of every filter name the archive knows.
BAND_OF_FILTER: dict[str, str] = {**{f: b for b, f in FILTERS.items()}, "HSC-R2": "r", "HSC-I2": "i"}

#: PDR2 mask bit planes (the MP_* header cards of a cutout carry the same mapping).
MASK_PLANES: dict[str, int] = {
    name: bit
    for bit, name in enumerate(
        (
            "BAD", "SAT", "INTRP", "CR", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "SUSPECT", "NO_DATA",
            "BRIGHT_OBJECT", "CROSSTALK", "NOT_DEBLENDED", "UNMASKEDNAN", "REJECTED", "CLIPPED",
            "SENSOR_EDGE", "INEXACT_PSF",
        )
    )
}

#: Half width (arcsec) that gives a 127 x 127 pixel cutout: 63 pixels either side of the centre.
HALF_WIDTH_127: float = 63 * PIXEL_SCALE
#: Half width the paper asked the cutout service for, in arcsec (~119 px wide, padded to 127).
PAPER_HALF_WIDTH: float = 10.0

#: Pixels a cutout may be larger than its nominal size (nominal_pixels) and still be taken as the
#: cutout asked for. How das_cutout rounds a half width to pixels is written nowhere we know of:
#: 2 floor(h / 0.168) + 1 gives 119 px at the paper's 10", round(2 h / 0.168 + 1) gives 120, and a
#: service may add a pixel more; cutouts cut short by a patch edge are smaller, never larger.
SIZE_SLACK_PX = 10


def nominal_pixels(half_size: float) -> float:
    """Pixels across a cutout of half size `half_size` arcsec, before the service rounds it."""
    return 2 * half_size / PIXEL_SCALE + 1


#: How a cutout's half size becomes pixels: "floor" 2 floor(h / 0.168) + 1 (119 at 10"), "round"
#: round(2 h / 0.168 + 1) (120), or a fixed number of pixels a side. The real service's rule is not
#: documented: the stand-in can answer in each way and the client takes all; cutouts cut from coadd
#: files here use "floor".
Rounding = Union[Literal["floor", "round"], int]


def cutout_pixels(half_size: float, rounding: Rounding = "floor") -> int:
    """Pixels a side of a cutout of half size `half_size` arcsec, rounded as `rounding` says."""
    if rounding == "floor":
        return 2 * int(math.floor(half_size / PIXEL_SCALE + 1e-6)) + 1
    if rounding == "round":
        return int(math.floor(nominal_pixels(half_size) + 0.5))
    return int(rounding)


def nearest_pixel(v: float) -> int:
    """The pixel whose centre is nearest the (zero-based) pixel coordinate `v`."""
    return int(math.floor(v + 0.5))


def cutout_box(
    x: float, y: float, half_width: float, half_height: float | None = None, rounding: Rounding = "floor"
) -> tuple[int, int, int, int]:
    """The pixel box (x0, x1, y0, y1) the cutout service cuts around pixel position (x, y), before
    any edge trims it: cutout_pixels a side around the nearest pixel, an even size with its extra
    pixel on the high side."""
    nx = cutout_pixels(half_width, rounding)
    ny = cutout_pixels(half_width if half_height is None else half_height, rounding)
    x0, y0 = nearest_pixel(x) - (nx - 1) // 2, nearest_pixel(y) - (ny - 1) // 2
    return x0, x0 + nx, y0, y0 + ny


PDR2_CUTOUT_URL = "https://hsc-release.mtk.nao.ac.jp/das_cutout/pdr2/cgi-bin/cutout"
#: Rows per request clients use (the service takes at most 1000).
ROWS_PER_REQUEST = 990
#: Whole galaxies per request: 5 bands x 198 < 990 rows.
GALAXIES_PER_REQUEST = ROWS_PER_REQUEST // len(BANDS)


class MemberName(NamedTuple):
    """What the name of one tar member of a das_cutout reply says."""

    lineno: int
    filter: str
    tract: int
    rerun: str


_MEMBER_RE = re.compile(r"(?:^|/)(\d+)-cutout-(HSC-[A-Z0-9]+)-(\d+)-([A-Za-z0-9_]+)\.fits$")


def member_name(archive: str, lineno: int, filter_name: str, tract: int, rerun: str) -> str:
    """The member name das_cutout gives the cutout of list line `lineno`."""
    return f"{archive}/{lineno}-cutout-{filter_name}-{tract}-{rerun}.fits"


def parse_member_name(name: str) -> MemberName | None:
    """Parse a das_cutout member name; None when it is not a cutout name."""
    m = _MEMBER_RE.search(name)
    if m is None:
        return None
    return MemberName(int(m.group(1)), m.group(2), int(m.group(3)), m.group(4))
