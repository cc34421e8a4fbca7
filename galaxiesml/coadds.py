"""Stamps cut from a mirror of the HSC coadd release, reading only the bytes they need.

A release (and a mirror of it, on any filesystem) holds one file per filter and patch:
`<root>/deepCoadd-results/<FILTER>/<tract>/<x>,<y>/calexp-<FILTER>-<tract>-<x>,<y>.fits`, HDU 1 the
image, 2 the mask, 3 the variance, each with its WCS (docs/hsc-coadds.md). The catalog names each
object's patch (PDR2's `skymap_id` = tract x 10000 + x x 100 + y), so a galaxy's file is known
without looking at the mirror: nothing here lists a folder, and the number of files in a mirror
changes no cost.

`PatchFile` reads a file's headers once, then, for any number of stamps, only the rows they span
(one read per run of overlapping rows), from a seekable binary stream: a local file, or Beam's
FileSystems.open on gs:// or s3://. A build takes a stamp's pixels as they are (placed on the
grid by galaxiesml.cutouts.place_stamp, as a service cutout is); `stamp_fits` writes the FITS file
the cutout service gives for the same box (the same planes, the WCS moved with it), which is what
the service stand-in serving a mirror sends.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO, Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from galaxiesml.hsc.format import FLUXMAG0, Rounding, cutout_box

#: The planes of a calexp file, by HDU number.
PLANE_HDUS = {"image": 1, "mask": 2, "variance": 3}
_BLOCK = 2880


@dataclass(frozen=True)
class PatchKey:
    """One coadd file: a filter and a patch of a tract."""

    filter: str
    tract: int
    x: int
    y: int

    def path(self, root: str) -> str:
        """Where the release keeps this patch's calexp file under `root` (a mirror of a rerun)."""
        patch = f"{self.x},{self.y}"
        name = f"calexp-{self.filter}-{self.tract}-{patch}.fits"
        return "/".join([root.rstrip("/"), "deepCoadd-results", self.filter, str(self.tract), patch, name])


def patch_of(skymap_id: int) -> tuple[int, int, int]:
    """(tract, patch x, patch y) of a PDR2 skymap_id (tract x 10000 + x x 100 + y)."""
    skymap_id = int(skymap_id)
    if skymap_id <= 0:
        raise ValueError(f"skymap_id {skymap_id} names no patch")
    tract, rest = divmod(skymap_id, 10000)
    return tract, rest // 100, rest % 100


@dataclass(frozen=True)
class _Plane:
    header: fits.Header
    offset: int  # of the first data byte in the file
    shape: tuple[int, int]  # (rows, columns)
    dtype: np.dtype


class PatchFile:
    """A calexp file's planes, read lazily from a seekable binary stream `f` (the caller closes it)."""

    def __init__(self, f: BinaryIO, planes: Sequence[str] = ("image",), name: str = ""):
        self.f = f
        self.name = name
        self.planes = tuple(planes)
        self.bytes_read = 0
        self._planes = self._read_headers(max(PLANE_HDUS[p] for p in self.planes))
        image = self._planes[PLANE_HDUS["image"]]
        self.wcs = WCS(image.header)
        self.shape = image.shape
        self.filter = str(self._planes[0].header.get("FILTER", "")).strip()
        self._wcs_headers: dict[str, fits.Header] = {}

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.bytes_read += len(data)
        return data

    def _read_headers(self, last_hdu: int) -> dict[int, _Plane]:
        """HDUs 0..last_hdu: each header, and where its data starts; data is skipped, not read."""
        planes: dict[int, _Plane] = {}
        offset = 0
        for hdu in range(last_hdu + 1):
            self.f.seek(offset)
            blocks = []
            while not blocks or not any(blocks[-1][i : i + 8] == b"END     " for i in range(0, _BLOCK, 80)):
                block = self._read(_BLOCK)
                if len(block) < _BLOCK:
                    raise ValueError(f"{self.name}: the file ends inside HDU {hdu}'s header")
                blocks.append(block)
            text = b"".join(blocks)
            header = fits.Header.fromstring(text.decode("ascii"))
            offset += len(text)
            naxis = [int(header.get(f"NAXIS{k}", 0)) for k in range(1, int(header.get("NAXIS", 0)) + 1)]
            size = abs(int(header.get("BITPIX", 8))) // 8 * int(np.prod(naxis)) if naxis else 0
            if hdu:
                if len(naxis) != 2:
                    raise ValueError(f"{self.name}: HDU {hdu} is not a 2-d image")
                kind = {8: "u1", 16: "i2", 32: "i4", 64: "i8", -32: "f4", -64: "f8"}[int(header["BITPIX"])]
                planes[hdu] = _Plane(header, offset, (naxis[1], naxis[0]), np.dtype(">" + kind))
            else:
                planes[hdu] = _Plane(header, offset, (0, 0), np.dtype("u1"))
            offset += -(-size // _BLOCK) * _BLOCK
        return planes

    def _wcs_header(self, plane: str) -> fits.Header:
        """The WCS cards of a plane's header (parsed once per file, not once per stamp)."""
        if plane not in self._wcs_headers:
            self._wcs_headers[plane] = WCS(self._planes[PLANE_HDUS[plane]].header).to_header()
        return self._wcs_headers[plane]

    def pixel(self, ra: float, dec: float) -> tuple[float, float]:
        x, y = self.wcs.world_to_pixel_values(ra, dec)
        return float(x), float(y)

    def box(
        self, ra: float, dec: float, half_width: float, rounding: Rounding = "floor"
    ) -> tuple[int, int, int, int] | None:
        """The box (x0, x1, y0, y1) the service would cut around (ra, dec), trimmed at the file's
        edges; None when the position is not on this file."""
        return self.box_at(*self.pixel(ra, dec), half_width, rounding)

    def box_at(
        self, x: float, y: float, half_width: float, rounding: Rounding = "floor"
    ) -> tuple[int, int, int, int] | None:
        """box() of the file's pixel (x, y)."""
        ny, nx = self.shape
        if not (-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
            return None
        x0, x1, y0, y1 = cutout_box(x, y, half_width, rounding=rounding)
        return max(x0, 0), min(x1, nx), max(y0, 0), min(y1, ny)

    def stamps(self, boxes: Sequence[tuple[int, int, int, int]]) -> list[dict[str, np.ndarray]]:
        """Each box's pixels per plane, reading each run of overlapping rows once; one run's rows
        are held at a time."""
        out: list[dict[str, np.ndarray]] = [{} for _ in boxes]
        order = sorted(range(len(boxes)), key=lambda k: boxes[k][2])
        runs: list[list[int]] = []
        for k in order:
            if runs and boxes[k][2] < max(boxes[j][3] for j in runs[-1]):
                runs[-1].append(k)
            else:
                runs.append([k])
        for plane in self.planes:
            p = self._planes[PLANE_HDUS[plane]]
            row_bytes = p.shape[1] * p.dtype.itemsize
            for run in runs:
                y0, y1 = min(boxes[k][2] for k in run), max(boxes[k][3] for k in run)
                self.f.seek(p.offset + y0 * row_bytes)
                rows = np.frombuffer(self._read((y1 - y0) * row_bytes), p.dtype).reshape(y1 - y0, p.shape[1])
                for k in run:
                    bx0, bx1, by0, by1 = boxes[k]
                    out[k][plane] = rows[by0 - y0 : by1 - y0, bx0:bx1].copy()  # a copy: the run's rows go now
        return out

    def stamp_fits(
        self, box: tuple[int, int, int, int], pixels: dict[str, np.ndarray], planes: Sequence[str] | None = None
    ) -> bytes:
        """A stamp as the cutout service's FITS file: a primary header naming the filter, then one
        HDU per plane (all this file reads, or `planes` of them) with the WCS of the box."""
        x0, x1, y0, y1 = box
        primary = fits.PrimaryHDU()
        primary.header["FILTER"] = self.filter
        primary.header["FLUXMAG0"] = self._planes[0].header.get("FLUXMAG0", FLUXMAG0)
        hdus = [primary]
        for plane in planes or self.planes:
            header = self._wcs_header(plane).copy()  # the plane's WCS, moved to the box's corner
            header["CRPIX1"] -= x0
            header["CRPIX2"] -= y0
            header["EXTTYPE"] = plane.upper()
            hdus.append(fits.ImageHDU(np.ascontiguousarray(pixels[plane]), header=header))
        buf = io.BytesIO()
        fits.HDUList(hdus).writeto(buf)
        return buf.getvalue()
