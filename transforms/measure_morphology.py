"""Stage 7 (paper section 3.4): the morphology columns of each galaxy, all five bands, with sep.

Padded pixels (outside the cutout) are measured as the image cube stores them, zero, as the paper's
Source Extractor saw them (--padded_pixels missing gives them as no data instead). A band that fails comes back as NaN values with its
measurement_error flag set and is counted; a galaxy whose measurement raises for any other reason
goes to the failed output. Neither stops the run."""
from __future__ import annotations

import apache_beam as beam
import numpy as np

from galaxiesml.cutouts import measured_image
from galaxiesml.morphology import FLAG_COLUMNS, measure_galaxy, read_fits_image
from galaxiesml.schema import BANDS
from transforms.fetch_cutouts import FAILED, failed_record
from transforms.metrics import increment


def load_psfs(path: str) -> list[np.ndarray] | None:
    """Per-band PSF images from a FITS cube of 5 planes (g..y), or None for the default Moffat."""
    if not path:
        return None
    cube = read_fits_image(path)
    if cube.ndim != 3 or cube.shape[0] != len(BANDS):
        raise ValueError(f"{path}: a PSF cube needs {len(BANDS)} planes (g, r, i, z, y), got shape {cube.shape}")
    return [np.asarray(p, dtype=np.float64) for p in cube]


class _Measure(beam.DoFn):
    def __init__(self, psf_path: str, fit_sersic: bool, padded_pixels: str):
        self.psf_path = psf_path
        self.fit_sersic = fit_sersic
        self.padded_pixels = padded_pixels

    def setup(self):
        from threadpoolctl import threadpool_limits

        # the fit's small SVDs run ~6x slower on a threaded BLAS; parallelism comes from workers
        threadpool_limits(1)
        self._psfs = load_psfs(self.psf_path)

    def process(self, record: dict):
        image = measured_image(record["image"], record["flags"], self.padded_pixels)
        try:
            morphology = measure_galaxy(image, self._psfs, fit_sersic=self.fit_sersic)
        except Exception as exc:  # never stop the run for one galaxy
            increment({"failed.morphology.error": 1})
            yield beam.pvalue.TaggedOutput(
                FAILED, failed_record(record["row"], "morphology", "error", f"{type(exc).__name__}: {exc}")
            )
            return
        counts = {"morphology.measured": 1}
        for flag in FLAG_COLUMNS:
            counts[f"morphology.{flag}"] = sum(bool(morphology[f"{b}_{flag}"]) for b in BANDS)
        increment(counts)
        yield {**record, "morphology": morphology}


class MeasureMorphology(beam.PTransform):
    """Galaxy records -> {"galaxies": the same with a "morphology" dict, "failed"}."""

    def __init__(self, psf_path: str = "", fit_sersic: bool = True, padded_pixels: str = "zero"):
        super().__init__()
        self.psf_path = psf_path
        self.fit_sersic = fit_sersic
        self.padded_pixels = padded_pixels

    def expand(self, galaxies):
        measure = _Measure(self.psf_path, self.fit_sersic, self.padded_pixels)
        return galaxies | "Measure 5 bands" >> beam.ParDo(measure).with_outputs(FAILED, main="galaxies")
