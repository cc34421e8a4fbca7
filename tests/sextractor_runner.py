"""Run Debian's Source Extractor 2.25 (`source-extractor`) with the paper's reference configuration
(tests/data/sextractor/) on one image, as the paper did: one subprocess per image."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

SE_BINARY = shutil.which("source-extractor") or shutil.which("sex")
CONFIG_DIR = Path(__file__).resolve().parent / "data" / "sextractor"
#: The columns compared with galaxiesml.morphology, by the name SE prints.
SE_TO_OURS = {
    "A_IMAGE": "major_axis",
    "B_IMAGE": "minor_axis",
    "THETA_IMAGE": "pos_angle",
    "ELLIPTICITY": "ellipticity",
    "FLUX_RADIUS": "half_light_radius",
    "ISOAREA_IMAGE": "isophotal_area",
    "MU_MAX": "peak_surface_brightness",
    "PETRO_RADIUS": "petro_rad",
}


def read_ascii_head(path: Path) -> np.ndarray:
    """An SE ASCII_HEAD catalogue as a structured array (empty when SE found nothing)."""
    names = []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            names.append(line.split()[2])
        elif line.strip():
            rows.append(tuple(float(v) for v in line.split()))
    dtype = [(n, "f8") for n in names]
    return np.array(rows, dtype=dtype) if rows else np.zeros(0, dtype=dtype)


def run_sextractor(fits_path: Path, workdir: Path, *, param: str = "morph.param", psf_model: Path | None = None) -> np.ndarray:
    """Run SE on one FITS image with the reference configuration; its catalogue (X/Y are 1-based)."""
    if SE_BINARY is None:
        raise RuntimeError("source-extractor is not installed")
    cat = workdir / (fits_path.stem + ".cat")
    cmd = [
        SE_BINARY, str(fits_path), "-c", str(CONFIG_DIR / "morph.sex"),
        "-PARAMETERS_NAME", str(CONFIG_DIR / param),
        "-FILTER_NAME", str(CONFIG_DIR / "gauss_1.5_3x3.conv"),
        "-CATALOG_NAME", str(cat), "-VERBOSE_TYPE", "QUIET",
    ]
    if psf_model is not None:
        cmd += ["-PSF_NAME", str(psf_model)]
    subprocess.run(cmd, check=True, cwd=workdir, capture_output=True)
    return read_ascii_head(cat)


def central_row(cat: np.ndarray, centre: float = 64.0) -> tuple[int, np.ndarray]:
    """(index of the detection nearest the 1-based centre, distances of all detections from it)."""
    d = np.hypot(cat["X_IMAGE"] - centre, cat["Y_IMAGE"] - centre)
    return int(np.argmin(d)) if len(d) else -1, d
