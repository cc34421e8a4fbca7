"""Figures of a photo-z run: the metrics per redshift bin as in the paper's Figure 6 (one line per
model), and photo-z against spec-z. matplotlib's object API on the Agg canvas: no pyplot state, no
display needed.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from galaxiesml.photoz.metrics import OUTLIER_THRESHOLD

#: Figure 6's panels: (a) bias, (b) scatter, (c) outlier fraction, (d) MSE, (e) loss.
FIGURE6_PANELS: tuple[tuple[str, str], ...] = (
    ("bias", "bias"),
    ("scatter", "scatter (1.48 MAD of dz)"),
    ("outlier_fraction", "outlier fraction"),
    ("mse", "MSE"),
    ("loss", "loss (eq. 1)"),
)


def plot_metrics_by_bin(tables: Mapping[str, Sequence[dict[str, Any]]], path: str | os.PathLike) -> None:
    """Figure 6: each metric against the centre of its z_spec bin, one line per model of `tables`
    (model name -> rows of metrics_table; the "all" row is left out)."""
    fig = Figure(figsize=(3.2 * len(FIGURE6_PANELS), 3.2), layout="constrained")
    axes = fig.subplots(1, len(FIGURE6_PANELS))
    for (metric, label), ax, letter in zip(FIGURE6_PANELS, axes, "abcde"):
        for model, rows in tables.items():
            binned = [r for r in rows if r["bin"] != "all" and r["n"] > 0]
            centres = [(r["z_lo"] + r["z_hi"]) / 2 for r in binned]
            ax.plot(centres, [r[metric] for r in binned], marker="o", label=model.upper())
        if metric == "bias":
            ax.axhline(0.0, color="0.6", linewidth=0.8)
        ax.set_xlabel("spectroscopic redshift")
        ax.set_title(f"({letter}) {label}", fontsize=10)
    axes[0].legend()
    fig.savefig(path, format="png", dpi=100)


def plot_photoz_vs_specz(z_spec: np.ndarray, z_phot: np.ndarray, path: str | os.PathLike, title: str = "") -> None:
    """z_phot against z_spec as a 2-d histogram, with the 1:1 line and the outlier limits
    z_phot = z_spec +- 0.15 (1 + z_spec)."""
    z_spec, z_phot = np.asarray(z_spec, dtype=float), np.asarray(z_phot, dtype=float)
    top = max(float(np.nanmax(z_spec, initial=0.0)), float(np.nanmax(z_phot, initial=0.0)), 0.1) * 1.05
    fig = Figure(figsize=(4.8, 4.4), layout="constrained")
    ax = fig.subplots()
    counts, xe, ye = np.histogram2d(z_spec, z_phot, bins=80, range=[[0, top], [0, top]])
    ax.pcolormesh(xe, ye, np.ma.masked_equal(counts.T, 0), cmap="viridis", norm="log")
    line = np.array([0.0, top])
    ax.plot(line, line, color="k", linewidth=0.8)
    for sign in (-1, 1):
        ax.plot(line, line + sign * OUTLIER_THRESHOLD * (1 + line), color="r", linewidth=0.8, linestyle="--")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="spectroscopic redshift", ylabel="photometric redshift", title=title)
    fig.savefig(path, format="png", dpi=100)
