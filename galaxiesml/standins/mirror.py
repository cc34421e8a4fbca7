"""A sky served from a release-shaped coadd mirror: what the cutout stand-in cuts from when it
stands for the real service, which cuts from the release's patch files too. It gives
CutoutService the `cutout` and `layout` a synthetic Sky gives, reading the files with
galaxiesml.coadds, so a build from the mirror and a build through the service stand-in serving it
can be compared pixel for pixel."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from galaxiesml.coadds import PatchFile, PatchKey, patch_of
from galaxiesml.hsc.format import Rounding
from galaxiesml.sky import SkyLayout

PLANES = ("image", "mask", "variance")


@dataclass
class MirrorStamp:
    """One cut stamp, with the planes it can be written with."""

    patch: PatchFile
    box: tuple[int, int, int, int]
    pixels: dict[str, np.ndarray]

    def fits_bytes(self, image: bool = True, mask: bool = False, variance: bool = False) -> bytes:
        planes = [p for p, wanted in zip(PLANES, (image, mask, variance)) if wanted]
        return self.patch.stamp_fits(self.box, self.pixels, planes)


@dataclass
class MirrorSky:
    """The patch files under `root`, laid out on `layout`'s tract (the synthetic sky that wrote them)."""

    root: str
    layout: SkyLayout

    def cutout(
        self, filter_name: str, ra: float, dec: float, half_width: float, half_height: float | None = None,
        noise: bool = True, rounding: Rounding = "floor",
    ) -> MirrorStamp | None:
        """The stamp the service would cut from the file of the patch holding (ra, dec), or None
        where the mirror has no such file or the position is off it."""
        x, y = self.layout.to_pixel(np.array([ra]), np.array([dec]))
        if not (np.isfinite(x[0]) and np.isfinite(y[0])):
            return None
        tract, px, py = patch_of(int(self.layout.skymap_id(x, y)[0]))
        path = PatchKey(filter_name, tract, px, py).path(self.root)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            patch = PatchFile(f, PLANES, name=path)
            box = patch.box(ra, dec, half_width, rounding)
            return None if box is None else MirrorStamp(patch, box, patch.stamps([box])[0])
