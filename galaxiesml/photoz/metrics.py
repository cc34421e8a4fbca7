"""Photometric-redshift metrics of the paper's Appendix 11 (equations 1-6), overall and per redshift bin.

With dz = z_phot - z_spec for each galaxy:

- bias (eq. 2): the mean of dz / (1 + z_spec);
- scatter (eq. 4): 1.48 x MAD of dz itself, i.e. 1.48 x median(|dz - median(dz)|), *not* normalised
  by 1 + z, exactly as the paper's equation 4 writes it; `scatter_norm` is the same statistic of
  dz / (1 + z_spec) (the usual sigma_NMAD of HSC photo-z papers), reported beside it;
- rms (eq. 3): sqrt(mean((dz / (1 + z_spec))^2));
- outlier fraction (eqs. 5-6): the fraction with |dz| / (1 + z_spec) > 0.15;
- mse: mean(dz^2), unnormalised;
- loss (eq. 1, from Tanaka et al. 2018 [39]): the mean of 1 - 1 / (1 + (dz / (0.15 (1 + z_phot)))^2).
  Equation 1 normalises by 1 + z_phot, as printed in the paper (Tanaka et al. write 1 + z_spec);
  `loss_terms(..., relative_to="spec")` gives that form.

numpy only (torch imports nothing from here but `loss_terms`, which is plain arithmetic and so works
on tensors too: the training loss and the reported loss are one formula).
"""
from __future__ import annotations

import csv
import math
import os
from typing import Any, Iterable, Literal, Sequence

import numpy as np

#: |dz| / (1 + z_spec) above this is an outlier (eq. 5); also the loss's width gamma (eq. 1).
OUTLIER_THRESHOLD = 0.15
LOSS_GAMMA = 0.15
#: Scales a MAD to a normal distribution's standard deviation (eq. 4).
MAD_SCALE = 1.48
#: Default redshift bins (edges in z_spec): quarter-redshift bins up to z = 1.5, the highest the
#: paper's Figure 6 shows, and one bin for the sparse tail up to the catalog's z < 4 cut.
DEFAULT_BINS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 4.0)
#: The metrics of a table row, in column order.
METRICS: tuple[str, ...] = ("bias", "scatter", "scatter_norm", "rms", "outlier_fraction", "mse", "loss")
COLUMNS: tuple[str, ...] = ("bin", "z_lo", "z_hi", "n", *METRICS)


def _pair(z_spec: Any, z_phot: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 1-d arrays of one length (raises otherwise)."""
    s, p = np.asarray(z_spec, dtype=np.float64).ravel(), np.asarray(z_phot, dtype=np.float64).ravel()
    if s.shape != p.shape:
        raise ValueError(f"z_spec and z_phot differ in length: {s.size} != {p.size}")
    return s, p


def normalized_error(z_spec: Any, z_phot: Any) -> np.ndarray:
    """dz / (1 + z_spec) per galaxy (the summand of eqs. 2, 3 and 5)."""
    s, p = _pair(z_spec, z_phot)
    return (p - s) / (1.0 + s)


def nmad(x: Any) -> float:
    """1.48 x median(|x - median(x)|): a standard deviation robust to outliers (eq. 4)."""
    x = np.asarray(x, dtype=np.float64)
    return MAD_SCALE * float(np.median(np.abs(x - np.median(x)))) if x.size else math.nan


def bias(z_spec: Any, z_phot: Any) -> float:
    """Mean of dz / (1 + z_spec) (eq. 2 averaged over galaxies)."""
    return _mean(normalized_error(z_spec, z_phot))


def scatter(z_spec: Any, z_phot: Any) -> float:
    """1.48 x MAD of dz = z_phot - z_spec, unnormalised, as eq. 4 defines it."""
    s, p = _pair(z_spec, z_phot)
    return nmad(p - s)


def scatter_norm(z_spec: Any, z_phot: Any) -> float:
    """1.48 x MAD of dz / (1 + z_spec) (sigma_NMAD as HSC photo-z papers quote it)."""
    return nmad(normalized_error(z_spec, z_phot))


def rms(z_spec: Any, z_phot: Any) -> float:
    """sqrt(mean((dz / (1 + z_spec))^2)) (eq. 3)."""
    return math.sqrt(_mean(normalized_error(z_spec, z_phot) ** 2))


def outlier_fraction(z_spec: Any, z_phot: Any, threshold: float = OUTLIER_THRESHOLD) -> float:
    """Fraction of galaxies with |dz| / (1 + z_spec) > threshold (eqs. 5-6)."""
    return _mean(np.abs(normalized_error(z_spec, z_phot)) > threshold)


def mse(z_spec: Any, z_phot: Any) -> float:
    """mean(dz^2), unnormalised."""
    s, p = _pair(z_spec, z_phot)
    return _mean((p - s) ** 2)


def loss_terms(z_spec: Any, z_phot: Any, gamma: float = LOSS_GAMMA, relative_to: Literal["phot", "spec"] = "phot") -> Any:
    """Per-galaxy loss of eq. 1: 1 - 1 / (1 + (dz / (gamma (1 + z_ref)))^2), z_ref = z_phot as the paper
    prints it ("spec": as Tanaka et al. 2018 define it). 0 for a perfect estimate, -> 1 for a far
    outlier, so outliers cost at most 1. Plain arithmetic: numpy arrays and torch tensors alike."""
    ref = z_phot if relative_to == "phot" else z_spec
    x = (z_phot - z_spec) / (gamma * (1.0 + ref))
    return 1.0 - 1.0 / (1.0 + x * x)


def loss(z_spec: Any, z_phot: Any, gamma: float = LOSS_GAMMA, relative_to: Literal["phot", "spec"] = "phot") -> float:
    """Mean of eq. 1 over galaxies."""
    s, p = _pair(z_spec, z_phot)
    return _mean(loss_terms(s, p, gamma, relative_to))


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else math.nan


def metrics(z_spec: Any, z_phot: Any) -> dict[str, float]:
    """All of METRICS for one set of galaxies (NaN where there are none)."""
    s, p = _pair(z_spec, z_phot)
    funcs = {"bias": bias, "scatter": scatter, "scatter_norm": scatter_norm, "rms": rms,
             "outlier_fraction": outlier_fraction, "mse": mse, "loss": loss}
    return {name: funcs[name](s, p) for name in METRICS}


def metrics_table(z_spec: Any, z_phot: Any, bins: Sequence[float] = DEFAULT_BINS) -> list[dict[str, Any]]:
    """Rows of COLUMNS: first "all" galaxies, then one per bin [lo, hi) of z_spec (the last bin
    closed, [lo, hi]). Galaxies outside the edges count only in "all"; an empty bin has n = 0 and
    NaN metrics."""
    s, p = _pair(z_spec, z_phot)
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be at least two increasing edges, not {list(bins)}")
    rows = [{"bin": "all", "z_lo": float(s.min()) if s.size else math.nan,
             "z_hi": float(s.max()) if s.size else math.nan, "n": int(s.size), **metrics(s, p)}]
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = k == edges.size - 2
        sel = (s >= lo) & ((s <= hi) if last else (s < hi))
        rows.append({"bin": f"{lo:g}-{hi:g}", "z_lo": float(lo), "z_hi": float(hi), "n": int(sel.sum()), **metrics(s[sel], p[sel])})
    return rows


def _cell(value: Any) -> str:
    """A table cell: floats to 4 significant digits, NaN as an empty cell in Markdown."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def to_markdown(rows: Iterable[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """A GitHub Markdown table of `rows`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike, columns: Sequence[str] = COLUMNS) -> None:
    """`rows` as CSV with a header, full float precision (repr), NaN written as 'nan'."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A table written by write_csv, numbers parsed back (n as int, the rest of the numbers as float)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (v if k == "bin" else int(v) if k == "n" else float(v)) for k, v in r.items()} for r in rows]
