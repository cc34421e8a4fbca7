"""The data card of a built GalaxiesML output directory: `datacard/index.html` and `datacard/README.md`.

Made from the files alone (summary.json, catalog/*.parquet, galaxies/<split>/part-*.parquet), in
the spirit of the paper's figures:

* the funnel from catalog rows to the final sample (summary.json), checked against the Parquet files;
* the redshift distribution per split; cmodel magnitudes and their errors per band;
* example galaxies at increasing redshift in linear and log scale (the paper's Figure 1), as
  g, r, i composites (blue, green, red);
* one galaxy's i-band sep detections, its isophotal footprint, ellipse, Petrosian and half-light
  apertures (Figure 3), the detections taken from galaxiesml.morphology's own detection step;
* the 13 morphology columns in all five bands, and the morphology flags;
* rejections, duplicates and failures by reason; the build's options and the software versions.

The galaxy Parquet is streamed: only the tabular columns the card shows are read, and image cubes
only for the handful of galaxies drawn. The HTML and the Markdown render one list of sections and
share the PNG figures in datacard/img/, referenced relatively.

    python -m galaxiesml.datacard OUTPUT_DIR [--dest DIR]
"""
from __future__ import annotations

import argparse
import html
import json
import math
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Circle, Ellipse
from matplotlib.ticker import NullFormatter

from galaxiesml.cutouts import CENTRE, PADDED, SIZE, measured_image
from galaxiesml.dataset import GALAXIES_DIR, cube_numpy
from galaxiesml.morphology import FLAG_COLUMNS, MEASUREMENT_COLUMNS, NEIGHBOUR_RADII, morphology_columns
from galaxiesml.schema import BANDS, SPLITS

CARD_DIR = "datacard"
IMG_DIR = "img"
#: Galaxies in the redshift sequence (the paper's Figure 1 shows 6).
N_EXAMPLES = 8
#: The band of the Figure 3 galaxy.
MORPHOLOGY_BAND = "i"
#: Detection ellipses are drawn at this many times (A, B), as SE's check images do.
DETECTION_ELLIPSE_SCALE = 3.0
#: Galaxies considered for each example slot, nearest the slot's redshift quantile first.
EXAMPLE_CANDIDATES = 6
#: Rows at most in a table that lists galaxies.
MAX_LISTED = 50
#: The log stretch's a: log10(1 + a x) / log10(1 + a) for x in [0, 1] (ds9 uses 1000).
LOG_STRETCH = 100.0
#: Packages whose versions the card records; the first is this tool.
VERSION_PACKAGES: tuple[str, ...] = ("galaxiesml-builder", "apache-beam", "numpy", "pyarrow", "sep", "astropy")
#: Units of the morphology columns (paper Table 1).
MORPHOLOGY_UNITS: dict[str, str] = {
    "ellipticity": "",
    "half_light_radius": "px",
    "isophotal_area": "px",
    "major_axis": "px",
    "minor_axis": "px",
    "peak_surface_brightness": "mag/arcsec² (zero point 0)",
    "petro_rad": "× A",
    "pos_angle": "deg",
    "sersic_index": "",
    "total_galaxies": "count",
    "central_image_pop_15px_rad": "count",
    "central_image_pop_10px_rad": "count",
    "central_image_pop_5px_rad": "count",
}
COUNT_COLUMNS = frozenset(c for c, u in MORPHOLOGY_UNITS.items() if u == "count")
#: Catalog-stage outputs: file prefix -> the column counted -> the summary.json funnel key it must match.
CATALOG_OUTPUTS: tuple[tuple[str, str, str], ...] = (
    ("rejected", "reason", "rejected_by_reason"),
    ("duplicates", "duplicate_key", "duplicates_by_key"),
    ("kept", "split", "catalog_kept_by_split"),
)
#: Output files listed on the card: (label, glob under the output directory).
OUTPUT_GLOBS: tuple[tuple[str, str], ...] = (
    ("summary", "summary.json"),
    ("catalog", "catalog/*.parquet"),
    *((f"galaxies/{s}", f"{GALAXIES_DIR}/{s}/part-*.parquet") for s in SPLITS),
    ("hdf5", "hdf5/*.hdf5"),
    ("csv", "csv/*.csv"),
)


# --- the card's content, rendered twice ------------------------------------------------------------
@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Image:
    file: str  # relative to the card directory
    alt: str
    caption: str = ""


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[str | Table | Image] = field(default_factory=list)


def fmt(value: Any) -> str:
    """One table cell: counts with thousands separators, floats to 4 significant digits."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "–"
        return f"{int(v):,}" if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def md_escape(text: str) -> str:
    """Text safe in Markdown: the characters that would start markup backslash-escaped."""
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", text).replace("\n", " ")


def _md_cell(value: Any) -> str:
    return md_escape(fmt(value))


def render_markdown(title: str, intro: str, sections: Sequence[Section], banner: str = "") -> str:
    """The card as GitHub-flavoured Markdown; a `banner` goes first, as a quote in bold."""
    contents = " · ".join(f"[{md_escape(s.title)}](#{s.anchor})" for s in sections)
    out = [f"# {md_escape(title)}", ""] + ([f"> **{md_escape(banner)}**", ""] if banner else [])
    out += [md_escape(intro), "", f"Contents: {contents}", ""]
    for s in sections:
        out += [f'<a id="{s.anchor}"></a>', f"## {md_escape(s.title)}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                if b.caption:
                    out += [f"*{md_escape(b.caption)}*", ""]
                out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
                out.append("|" + "|".join(" --- " for _ in b.headers) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            elif isinstance(b, Image):
                out.append(f"![{md_escape(b.alt)}]({b.file})")
                if b.caption:
                    out += ["", f"*{md_escape(b.caption)}*"]
            else:
                out.append(md_escape(b))
            out.append("")
    return "\n".join(out)


#: Records, once the page has loaded, whether every image decoded (read back by the tests).
IMAGE_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var el = document.getElementById('image-check');
  el.setAttribute('data-total', imgs.length);
  el.setAttribute('data-loaded', imgs.length - bad.length);
  el.setAttribute('data-missing', bad.map(function (i) { return i.getAttribute('src'); }).join(' '));
  el.textContent = (imgs.length - bad.length) + ' of ' + imgs.length + ' figures loaded' +
    (bad.length ? ' (missing: ' + el.getAttribute('data-missing') + ')' : '');
});
"""

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}
td{font-variant-numeric:tabular-nums}th{background:#f3f3f3}caption{caption-side:top;text-align:left;font-style:italic;padding:.2em 0}
figure{margin:.6em 0 1.4em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.92em;color:#444}.banner{border:2px solid #b00;background:#fff3f3;padding:.6em .8em;font-weight:bold}nav a{margin-right:.8em}#image-check{color:#666;font-size:.85em}
"""


def render_html(title: str, intro: str, sections: Sequence[Section], banner: str = "") -> str:
    """The card as one HTML page (figures referenced relatively); a `banner` goes first, boxed."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *([f'<p class="banner" id="banner">{e(banner)}</p>'] if banner else []),
        f"<p>{e(intro)}</p>",
        "<nav>" + "".join(f'<a href="#{s.anchor}">{e(s.title)}</a>' for s in sections) + "</nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.anchor}"><h2>{e(s.title)}</h2>')
        for b in s.blocks:
            if isinstance(b, Table):
                parts.append("<table>" + (f"<caption>{e(b.caption)}</caption>" if b.caption else ""))
                parts.append("<tr>" + "".join(f"<th>{e(fmt(h))}</th>" for h in b.headers) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(fmt(c))}</td>" for c in row) + "</tr>" for row in b.rows]
                parts.append("</table>")
            elif isinstance(b, Image):
                parts.append(
                    f'<figure><img src="{e(b.file)}" alt="{e(b.alt)}">'
                    + (f"<figcaption>{e(b.caption)}</figcaption>" if b.caption else "")
                    + "</figure>"
                )
            else:
                parts.append(f"<p>{e(b)}</p>")
        parts.append("</section>")
    parts += ['<p id="image-check" data-total="" data-loaded="">figures not checked (scripts off)</p>']
    parts += [f"<script>{IMAGE_CHECK_SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)


# --- reading the build -----------------------------------------------------------------------------
def galaxy_files(root: Path) -> list[tuple[str, Path]]:
    """(split, shard) for every galaxy Parquet shard, splits in the paper's order."""
    return [(s, p) for s in SPLITS for p in sorted((root / GALAXIES_DIR / s).glob("part-*.parquet"))]


def count_rows(paths: Iterable[Path], columns: Sequence[str]) -> Counter:
    """Rows per value of `columns` (a value, or a tuple for several) over Parquet files, reading
    those columns only; a file lacking one counts nothing."""
    counts: Counter = Counter()
    for path in paths:
        pf = pq.ParquetFile(path)
        if not set(columns) <= set(pf.schema_arrow.names):
            continue
        for batch in pf.iter_batches(columns=list(columns)):
            values = [batch.column(c).to_pylist() for c in columns]
            counts.update(values[0] if len(columns) == 1 else zip(*values))
    return counts


def first_rows(paths: Iterable[Path], columns: Sequence[str], key: str, per_key: int, limit: int) -> list[dict]:
    """Up to `per_key` rows per value of `key` (at most `limit` in all), streaming `columns` only."""
    seen: Counter = Counter()
    out: list[dict] = []
    for path in paths:
        pf = pq.ParquetFile(path)
        cols = [c for c in columns if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(columns=cols):
            for row in batch.to_pylist():
                if seen[row[key]] < per_key:
                    seen[row[key]] += 1
                    out.append(row)
                if len(out) >= limit:
                    return out
    return out


def read_galaxy_columns(files: Sequence[tuple[str, Path]], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The named tabular columns of every row, streamed batch by batch, plus `split` (the file's
    own column where it has one, else the split it is filed under), and `_file` and `_row` (index
    in `files`, row within it) to find a galaxy's images again. A column a file lacks reads as NaN."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in (*columns, "split", "_file", "_row")}
    for k, (split, path) in enumerate(files):
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        present = [c for c in columns if c in names] + (["split"] if "split" in names else [])
        offset = 0
        for batch in pf.iter_batches(batch_size=8192, columns=present):
            n = batch.num_rows
            for c in columns:
                parts[c].append(batch.column(c).to_numpy(zero_copy_only=False) if c in present else np.full(n, np.nan))
            own = batch.column("split").to_numpy(zero_copy_only=False) if "split" in names else None
            parts["split"].append(own if own is not None else np.full(n, split, dtype=object))
            parts["_file"].append(np.full(n, k))
            parts["_row"].append(np.arange(offset, offset + n))
            offset += n
    return {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in parts.items()}


def read_cubes(path: Path, rows: Iterable[int], columns: Sequence[str]) -> dict[int, dict[str, np.ndarray]]:
    """The cube columns (image, image_flags, ...) of a few rows of one shard: only the row groups
    holding them are read, in small batches, stopping after the last row wanted."""
    pf = pq.ParquetFile(path)
    md = pf.metadata
    starts = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    wanted = sorted(set(int(r) for r in rows))
    out: dict[int, dict[str, np.ndarray]] = {}
    for rg in sorted({int(np.searchsorted(starts, r, side="right") - 1) for r in wanted}):
        pos = int(starts[rg])
        last = max(r for r in wanted if r < starts[rg + 1])
        for batch in pf.iter_batches(batch_size=4, row_groups=[rg], columns=list(columns)):
            for r in wanted:
                if pos <= r < pos + batch.num_rows:
                    out[r] = {c: cube_numpy(batch.column(c).slice(r - pos, 1))[0] for c in columns}
            pos += batch.num_rows
            if pos > last:
                break
    return out


def versions() -> dict[str, str]:
    """Installed versions of VERSION_PACKAGES (what made this card)."""
    out = {}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# --- figures -------------------------------------------------------------------------------------
def save(fig: MplFigure, path: Path, tight: bool = False) -> None:
    """Write a figure as PNG with matplotlib's Agg canvas (no pyplot state); `tight` trims the margins."""
    fig.savefig(path, format="png", dpi=100, **({"bbox_inches": "tight", "pad_inches": 0.05} if tight else {}))


def scale_image(image: np.ndarray, log: bool) -> np.ndarray:
    """An image (or H x W x 3 composite) to [0, 1]: the median (sky) to the 99.5th percentile of its
    finite pixels; `log` as ds9's log stretch, log10(1 + a x) / log10(1 + a) with a = LOG_STRETCH, to
    show faint features. Missing (NaN) pixels show as sky."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image, dtype=float)
    lo, hi = np.median(finite), np.percentile(finite, 99.5)
    x = np.clip((np.nan_to_num(image, nan=lo) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.clip(np.log10(1.0 + LOG_STRETCH * x) / np.log10(1.0 + LOG_STRETCH), 0.0, 1.0) if log else x


def rgb(cube: np.ndarray, log: bool) -> np.ndarray:
    """g, r, i planes of a (5, H, W) cube as blue, green, red, scaled together."""
    idx = [BANDS.index(b) for b in ("i", "r", "g")]
    return scale_image(np.moveaxis(cube[idx], 0, -1), log)


def step_hist(ax, values: np.ndarray, bins: np.ndarray, label: str) -> None:
    counts, edges = np.histogram(values[np.isfinite(values)], bins=bins)
    ax.stairs(counts, edges, label=label, linewidth=1.4)


def bins_for(values: np.ndarray, integer: bool = False, robust: bool = True, n: int | None = None) -> np.ndarray:
    """Histogram edges over the finite values (1st-99th percentile when `robust`), integers centred."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.linspace(0.0, 1.0, 11)
    lo, hi = (np.percentile(v, [1, 99]) if robust and v.size > 20 else (v.min(), v.max()))
    if integer:
        return np.arange(math.floor(lo) - 0.5, math.ceil(hi) + 1.5, max(1, math.ceil((hi - lo + 1) / 40)))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n or int(np.clip(math.sqrt(v.size) * 2, 10, 60)) + 1)


def plot_funnel(f: dict, path: Path) -> None:
    """Remaining rows after each stage (left) and the rows each reason removed (right)."""
    stages = [
        ("rows read", f["rows_read"]),
        ("after quality cuts", f["rows_read"] - f["rejected"]),
        ("after duplicates", f["catalog_kept"]),
        ("with images + morphology", f["kept"]),
        *((f"  {s}", n) for s, n in f["kept_by_split"].items()),
    ]
    losses = [
        *((f"rejected: {k}", v) for k, v in f["rejected_by_reason"].items()),
        *((f"duplicate: {k}", v) for k, v in f["duplicates_by_key"].items()),
        *((f"failed: {s}/{r}", v) for s, d in f["failed_by_stage"].items() for r, v in d.items()),
    ]
    fig = MplFigure(figsize=(12, 0.35 * max(len(stages), len(losses), 4) + 1.2), layout="constrained")
    a1, a2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
    for ax, items, colour, title in (
        (a1, stages, "#3b75af", "galaxies remaining"),
        (a2, losses, "#c44e52", "rows removed, by reason"),
    ):
        labels, values = [k for k, _ in items], [v for _, v in items]
        y = np.arange(len(items))[::-1]
        ax.barh(y, values, color=colour)
        ax.set_yticks(y, labels)
        ax.set_title(title)
        top = max(values, default=0) or 1
        for yi, v in zip(y, values):
            ax.text(v + top * 0.01, yi, f"{v:,}", va="center", fontsize=9)
        ax.set_xlim(0, top * 1.18)
    save(fig, path)


def plot_redshift(z: np.ndarray, split: np.ndarray, path: Path) -> None:
    fig = MplFigure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    bins = bins_for(z, robust=False)
    step_hist(ax, z, bins, f"all ({z.size:,})")
    for s in SPLITS:
        sel = split == s
        if sel.any():
            step_hist(ax, z[sel], bins, f"{s} ({int(sel.sum()):,})")
    ax.set_xlabel("spectroscopic redshift z")
    ax.set_ylabel("galaxies per bin")
    ax.legend()
    save(fig, path)


#: The percentiles (over all bands) that bound the magnitude panels, each side widened by a tenth
#: of their span (never past the data): one odd value (a catalog magnitude of 0.02 passes the
#: paper's 0 < mag < 50) must not squash the rest into a spike, and the ordinary tails stay drawn.
ROBUST_RANGE = (0.5, 99.5)
ROBUST_MARGIN = 0.1


def robust_range(values: np.ndarray, log: bool = False) -> tuple[float, float]:
    """The axis range of `values` (finite ones; positive ones, in log10, when `log`): see ROBUST_RANGE."""
    v = values[np.isfinite(values) & ((values > 0) if log else True)]
    if v.size == 0:
        return (1e-3, 1.0) if log else (0.0, 1.0)
    v = np.log10(v) if log else v
    lo, hi = (float(x) for x in np.percentile(v, ROBUST_RANGE))
    pad = ROBUST_MARGIN * (hi - lo)
    lo, hi = max(float(v.min()), lo - pad), min(float(v.max()), hi + pad)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return (10**lo, 10**hi) if log else (lo, hi)


def magnitude_ranges(cols: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """The axes of the magnitude panels: "mag" and "magsigma", each over all five bands."""
    return {q: robust_range(np.concatenate([cols[f"{b}_cmodel_{q}"] for b in BANDS]).astype(float), q == "magsigma")
            for q in ("mag", "magsigma")}


def plot_magnitudes(cols: dict[str, np.ndarray], path: Path) -> None:
    """cmodel magnitudes (top) and their errors (bottom, log axis) per band, over robust ranges."""
    fig = MplFigure(figsize=(15, 5.5))
    fig.subplots_adjust(left=0.05, right=0.99, top=0.97, bottom=0.1, wspace=0.25, hspace=0.35)
    axes = fig.subplots(2, len(BANDS))
    ranges = magnitude_ranges(cols)
    mag_bins = np.linspace(*ranges["mag"], 41)
    sig_bins = np.geomspace(ranges["magsigma"][0], ranges["magsigma"][1] * 1.001, 31)
    for k, b in enumerate(BANDS):
        step_hist(axes[0, k], cols[f"{b}_cmodel_mag"], mag_bins, b)
        axes[0, k].set_xlabel(f"{b}_cmodel_mag")
        step_hist(axes[1, k], cols[f"{b}_cmodel_magsigma"], sig_bins, b)
        axes[1, k].set_xscale("log")
        axes[1, k].xaxis.set_minor_formatter(NullFormatter())  # the minor labels of a short log axis overlap
        axes[1, k].set_xlabel(f"{b}_cmodel_magsigma")
    axes[0, 0].set_ylabel("galaxies")
    axes[1, 0].set_ylabel("galaxies")
    save(fig, path)


def plot_examples(examples: list[dict], path: Path) -> None:
    """The paper's Figure 1: g, r, i composites at increasing redshift, linear (top) and log (bottom)."""
    n = len(examples)
    fig = MplFigure(figsize=(1.9 * n, 4.2))
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    for k, ex in enumerate(examples):
        for row, log in enumerate((False, True)):
            ax = axes[row, k]
            ax.imshow(rgb(ex["image"], log), origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, k].set_title(f"z = {ex['z']:.3f}", fontsize=10)
    axes[0, 0].set_ylabel("linear")
    axes[1, 0].set_ylabel("log")
    fig.subplots_adjust(wspace=0.04, hspace=0.04)
    save(fig, path, tight=True)


def plot_morphology_example(image: np.ndarray, det, central: int, values: dict[str, float], path: Path) -> None:
    """The paper's Figure 3 for one band: detections, the central isophotal footprint, apertures."""
    o = det.objects
    shown = scale_image(image, log=True)
    fig = MplFigure(figsize=(15, 5.2), layout="constrained")
    a1, a2, a3 = fig.subplots(1, 3)
    a1.imshow(shown, origin="lower", cmap="gray", interpolation="nearest")
    k = DETECTION_ELLIPSE_SCALE
    for j in range(len(o)):
        colour = "#ff3030" if j == central else "#30d0ff"
        a1.add_patch(Ellipse((o["x"][j], o["y"][j]), 2 * k * o["a"][j], 2 * k * o["b"][j],
                             angle=math.degrees(o["theta"][j]), fill=False, color=colour, lw=1.2))
        a1.plot(o["x"][j], o["y"][j], "+", color=colour, ms=5)
    for r in NEIGHBOUR_RADII:
        a1.add_patch(Circle((CENTRE, CENTRE), r, fill=False, color="yellow", ls=":", lw=0.9))
    a1.set_title(f"{len(o)} sep detection{'s' if len(o) != 1 else ''}, central in red", fontsize=10)

    seg = det.segmap
    footprint = np.where(seg == central + 1, 2.0, np.where(seg > 0, 1.0, 0.0))
    a2.imshow(footprint, origin="lower", cmap="magma", vmin=0, vmax=2.2, interpolation="nearest")
    a2.set_title(f"segmentation; isophotal_area = {fmt(values['isophotal_area'])} px", fontsize=10)

    x, y = float(o["x"][central]), float(o["y"][central])
    a, b, th = values["major_axis"], values["minor_axis"], values["pos_angle"]
    petro = values["petro_rad"]
    a3.imshow(shown, origin="lower", cmap="gray", interpolation="nearest")
    a3.add_patch(Ellipse((x, y), 2 * a, 2 * b, angle=th, fill=False, color="#ffb000", lw=1.4, label="A, B, θ"))
    a3.add_patch(Ellipse((x, y), 2 * petro * a, 2 * petro * b, angle=th, fill=False, color="#ff3030", lw=1.4,
                         label=f"Petrosian: {petro:.2f} × (A, B)"))
    a3.add_patch(Circle((x, y), values["half_light_radius"], fill=False, color="#30ff60", lw=1.4,
                        label=f"half-light radius {values['half_light_radius']:.2f} px"))
    half = max(petro * a * 1.1, 3 * values["half_light_radius"], 16.0)
    h, w = image.shape
    a3.set_xlim(max(x - half, -0.5), min(x + half, w - 0.5))
    a3.set_ylim(max(y - half, -0.5), min(y + half, h - 0.5))
    a3.legend(loc="upper right", fontsize=8, framealpha=0.7)
    a3.set_title(f"ellipticity = {values['ellipticity']:.3f}, Sersic n = {fmt(values['sersic_index'])}", fontsize=10)
    for ax in (a1, a2, a3):
        ax.set_xticks([])
        ax.set_yticks([])
    save(fig, path)


#: SE's Petrosian search ends at annuli of 6 A: a ratio that never falls below 0.2 there gives
#: 2 x 1.1 x 4.8 = 10.56 (docs/morphology.md).
PETRO_CAP = 10.56


def petro_note(cols: dict[str, np.ndarray]) -> str:
    v = np.concatenate([cols[f"{b}_petro_rad"] for b in BANDS]).astype(float)
    v = v[np.isfinite(v)]
    share = np.mean(np.isclose(v, PETRO_CAP, atol=0.01)) if v.size else 0.0
    return (f"{100 * share:.0f}% at {PETRO_CAP}: SE's cap (the Petrosian ratio\nnever fell below 0.2 within 6 A); "
            "3.5 is its floor")


def mu_note(cols: dict[str, np.ndarray]) -> str:
    return "negative: the paper's zero point is 0\n(add 27.0 for AB mag/arcsec² of HSC coadds)"


#: A line under a morphology panel whose values look wrong but are as Source Extractor gives them.
PANEL_NOTES = {"petro_rad": petro_note, "peak_surface_brightness": mu_note}


def plot_morphology_distributions(cols: dict[str, np.ndarray], path: Path) -> None:
    """One panel per morphology column, one step histogram per band (1st-99th percentile range)."""
    ncols = 4
    nrows = math.ceil(len(MEASUREMENT_COLUMNS) / ncols)
    fig = MplFigure(figsize=(16, 3.5 * nrows))
    fig.subplots_adjust(left=0.04, right=0.99, top=0.97, bottom=0.04, wspace=0.2, hspace=0.42)
    axes = np.asarray(fig.subplots(nrows, ncols)).ravel()
    for ax, c in zip(axes, MEASUREMENT_COLUMNS):
        allv = np.concatenate([cols[f"{b}_{c}"] for b in BANDS])
        bins = bins_for(allv, integer=c in COUNT_COLUMNS, n=30)
        for b in BANDS:
            step_hist(ax, cols[f"{b}_{c}"], bins, b)
        unit = MORPHOLOGY_UNITS[c]
        ax.set_title(c + (f" [{unit}]" if unit else ""), fontsize=10)
        if c in PANEL_NOTES:
            ax.set_xlabel(PANEL_NOTES[c](cols), fontsize=8.5, color="#a00")
    axes[0].legend(fontsize=8)
    for ax in axes[len(MEASUREMENT_COLUMNS):]:
        ax.set_visible(False)
    save(fig, path)


# --- sections ------------------------------------------------------------------------------------
def pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "–"


def funnel_rows(f: dict) -> list[list[Any]]:
    """The funnel as table rows (step, count, share of rows read), straight from summary.json."""
    read = f["rows_read"]
    rows: list[list[Any]] = [["rows read", read, pct(read, read)]]
    rows += [["rejected by the quality cuts", f["rejected"], pct(f["rejected"], read)]]
    rows += [[f"– rejected: {k}", v, pct(v, read)] for k, v in f["rejected_by_reason"].items()]
    rows += [["duplicates removed", f["duplicates"], pct(f["duplicates"], read)]]
    rows += [[f"– duplicate {k}", v, pct(v, read)] for k, v in f["duplicates_by_key"].items()]
    rows += [["kept by the catalog stages", f["catalog_kept"], pct(f["catalog_kept"], read)]]
    rows += [[f"– catalog kept: {k}", v, pct(v, read)] for k, v in f["catalog_kept_by_split"].items()]
    rows += [["failed in the image and morphology stages", f["failed"], pct(f["failed"], read)]]
    rows += [[f"– failed: {s} / {r}", v, pct(v, read)] for s, d in f["failed_by_stage"].items() for r, v in d.items()]
    rows += [["final sample", f["kept"], pct(f["kept"], read)]]
    rows += [[f"– {k}", v, pct(v, read)] for k, v in f["kept_by_split"].items()]
    return rows


def compare(check: str, expected: dict, got: dict, label=str) -> list[dict]:
    """One check per key of either count dict: summary.json's count against the files'."""
    return [
        {"check": f"{check}{label(k)}", "summary": expected.get(k, 0), "files": got.get(k, 0), "ok": expected.get(k, 0) == got.get(k, 0)}
        for k in sorted(set(expected) | set(got))
    ]


def consistency_checks(root: Path, f: dict, n_galaxies_by_split: dict[str, int] | None) -> list[dict]:
    """summary.json's counts against the rows of the files that hold them: rejected by reason,
    duplicates by key, catalog-stage kept by split, failed by stage and reason, galaxies by split
    (None: a build without galaxy files), and every row read accounted for by the files."""
    catalog = root / "catalog"
    counted = {
        prefix: count_rows(sorted(catalog.glob(f"{prefix}-*.parquet")), [column]) for prefix, column, _ in CATALOG_OUTPUTS
    }
    failed = count_rows(sorted(catalog.glob("failed-*.parquet")), ["stage", "reason"])
    final = n_galaxies_by_split if n_galaxies_by_split is not None else {}
    in_files = sum(counted["rejected"].values()) + sum(counted["duplicates"].values()) + sum(failed.values())
    in_files += sum(final.values()) if n_galaxies_by_split is not None else sum(counted["kept"].values()) - sum(failed.values())
    checks = compare("rows read, accounted for by the files", {"": f["rows_read"]}, {"": in_files})
    for prefix, column, key in CATALOG_OUTPUTS:
        checks += compare(f"catalog/{prefix}-*.parquet, {column} = ", f[key], counted[prefix])
    expected_failed = {(st, r): v for st, d in f["failed_by_stage"].items() for r, v in d.items()}
    checks += compare("catalog/failed-*.parquet rows", {"": f["failed"]}, {"": sum(failed.values())})
    checks += compare("catalog/failed-*.parquet, ", expected_failed, failed, lambda k: f"{k[0]} / {k[1]}")
    if n_galaxies_by_split is not None:
        checks += compare("galaxies/", f["kept_by_split"], final, lambda k: f"{k}/part-*.parquet rows")
    return checks


def quantile_row(label: str, v: np.ndarray, qs: Sequence[float] = (0, 25, 50, 75, 100)) -> list[Any]:
    v = v[np.isfinite(v)]
    return [label, v.size, *(np.percentile(v, qs) if v.size else [math.nan] * len(qs))]


def example_candidates(z: np.ndarray, n: int, per_slot: int = EXAMPLE_CANDIDATES) -> list[list[int]]:
    """For each of up to n evenly spaced redshift quantiles, the indices of the `per_slot` galaxies
    nearest it in redshift order, nearest first; every galaxy in one slot at most."""
    order = np.argsort(z, kind="stable")
    order = order[np.isfinite(z[order])]
    if order.size == 0:
        return []
    slots, taken = [], set()
    for k in range(n):
        target = min(int((k + 0.5) / n * order.size), order.size - 1)
        reach = per_slot * 3  # the nearest `reach` positions lie within `reach` of the target
        window = range(max(target - reach, 0), min(target + reach + 1, order.size))
        near = sorted(window, key=lambda j: (abs(j - target), j))[:reach]
        slot = [int(order[j]) for j in near if int(order[j]) not in taken][:per_slot]
        if slot:
            slots.append(slot)
            taken.update(slot)
    return slots


def padded_fractions(flags: np.ndarray) -> np.ndarray:
    """Per band, the share of a (5, S, S) flag cube's pixels that are padding (PADDED)."""
    return ((flags & PADDED) != 0).reshape(flags.shape[0], -1).mean(axis=1)


def pick_whole(candidates: list[int], padded: dict[int, np.ndarray]) -> int:
    """The first candidate (the nearest the quantile) whose worst band holds no more padding than the
    least padded candidate's, give or take two rows: a band cut short by a patch edge shows as seams
    in the colour composite."""
    worst = {i: float(padded[i].max()) for i in candidates}
    best = min(worst.values())
    return next(i for i in candidates if worst[i] <= best + 2.0 / SIZE)


def pick_morphology_galaxy(cols: dict[str, np.ndarray], band: str = MORPHOLOGY_BAND) -> int | None:
    """The lowest-redshift galaxy whose `band` measurement is complete and unflagged (as the paper's
    Figure 3 shows a low-redshift galaxy); failing that, the lowest with any measurement."""
    finite = np.all([np.isfinite(cols[f"{band}_{c}"]) for c in MEASUREMENT_COLUMNS if c != "sersic_index"], axis=0)
    clean = finite & ~np.any([cols[f"{band}_{c}"].astype(bool) for c in FLAG_COLUMNS], axis=0)
    for ok in (clean, finite):
        idx = np.flatnonzero(ok & np.isfinite(cols["specz_redshift"]))
        if idx.size:
            return int(idx[np.argmin(cols["specz_redshift"][idx])])
    return None


def flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def file_rows(root: Path) -> list[list[Any]]:
    rows = []
    for label, pattern in OUTPUT_GLOBS:
        paths = [p for p in sorted(root.glob(pattern)) if p.is_file()]
        if paths:
            rows.append([pattern, len(paths), f"{sum(p.stat().st_size for p in paths) / 1e6:.2f} MB"])
    return rows


@dataclass
class Build:
    """What the sections draw on: the build's counts and options, its galaxies' tabular columns, and
    the card's figure folder (figures made are listed in `images`; everything else in `result`)."""

    root: Path
    funnel: dict
    run: dict
    files: list[tuple[str, Path]]  # the Parquet the columns came from, (split, path)
    source: str  # their glob, as shown on the card
    cols: dict[str, np.ndarray]
    img: Path
    images: list[Path] = field(default_factory=list)
    result: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.cols["object_id"].size)

    @property
    def has_images(self) -> bool:
        return self.source.startswith(GALAXIES_DIR) and self.n > 0

    @property
    def z(self) -> np.ndarray:
        return self.cols["specz_redshift"].astype(float)

    def figure(self, name: str, plot, *args) -> str:
        """Draw `plot(*args, path)` into img/<name>.png; returns its path relative to the card."""
        path = self.img / f"{name}.png"
        plot(*args, path)
        self.images.append(path)
        return f"{IMG_DIR}/{name}.png"

    def cubes(self, indices: Sequence[int], columns: Sequence[str] = ("image", "image_flags")) -> list[dict[str, np.ndarray]]:
        """The image cubes of the galaxies at `indices` (of `cols`), reading only their shards' row groups."""
        by_file: dict[int, set[int]] = {}
        for i in indices:
            by_file.setdefault(int(self.cols["_file"][i]), set()).add(int(self.cols["_row"][i]))
        got = {(k, r): v for k, rows in by_file.items() for r, v in read_cubes(self.files[k][1], rows, columns).items()}
        self.result["cubes_read"] = self.result.get("cubes_read", 0) + len(got)
        return [got[(int(self.cols["_file"][i]), int(self.cols["_row"][i]))] for i in indices]


def load_build(root: Path, img: Path) -> Build:
    """summary.json and the tabular columns the card shows, streamed from the galaxy Parquet (or, for
    a catalog-only build, from catalog/kept-*.parquet)."""
    summary = json.loads((root / "summary.json").read_text())
    files, source = galaxy_files(root), f"{GALAXIES_DIR}/<split>/part-*.parquet"
    if not files:  # --cutout_source none: the catalog stage's kept rows, their split a column
        files, source = [("", p) for p in sorted((root / "catalog").glob("kept-*.parquet"))], "catalog/kept-*.parquet"
    mags = [f"{b}_cmodel_{q}" for q in ("mag", "magsigma") for b in BANDS]
    columns = ["object_id", "specz_redshift", *mags, *morphology_columns()]
    cols = read_galaxy_columns(files, columns)
    return Build(root, summary["funnel"], summary.get("run", {}), files, source, cols, img)


def funnel_section(b: Build) -> Section:
    f = b.funnel
    by_split = dict(Counter(b.cols["split"].tolist())) if b.source.startswith(GALAXIES_DIR) else None
    checks = b.result["checks"] = consistency_checks(b.root, f, by_split)
    bad = [c for c in checks if not c["ok"]]
    return Section("From catalog to final sample", "funnel", [
        f"{f['rows_read']:,} catalog rows were read; {f['kept']:,} galaxies are in the final sample "
        f"({pct(f['kept'], f['rows_read'])}). Every row read ends in exactly one of rejected, duplicate, failed or "
        "kept. Counts from summary.json.",
        Table(["step", "rows", "share of rows read"], funnel_rows(f)),
        Image(b.figure("funnel", plot_funnel, f), "funnel chart",
              "Left: rows remaining after each stage and per split. Right: rows removed, by reason."),
        f"Checked against the files: {len(checks) - len(bad)} of {len(checks)} counts agree"
        + ("." if not bad else f"; MISMATCH in {len(bad)}: " + "; ".join(c["check"] for c in bad) + "."),
        Table(["count", "summary.json", "files", "agree"], [[c["check"], c["summary"], c["files"], c["ok"]] for c in checks]),
    ])


def redshift_section(b: Build) -> Section:
    s = Section("Redshift", "redshift")
    if not b.n:
        s.blocks.append("No galaxy in the final sample.")
        return s
    z, split = b.z, b.cols["split"]
    s.blocks += [
        f"specz_redshift of the {b.n:,} galaxies in {b.source}, per split.",
        Image(b.figure("redshift", plot_redshift, z, split), "redshift histogram per split"),
        Table(["split", "galaxies", "min", "25%", "median", "75%", "max"],
              [quantile_row("all", z)] + [quantile_row(sp, z[split == sp]) for sp in SPLITS if (split == sp).any()]),
    ]
    return s


def magnitudes_section(b: Build) -> Section:
    s = Section("Magnitudes and their errors", "magnitudes")
    if not b.n:
        s.blocks.append("No galaxy in the final sample.")
        return s
    rows = []
    for band in BANDS:
        m, e = (b.cols[f"{band}_cmodel_{q}"].astype(float) for q in ("mag", "magsigma"))
        m, e = m[np.isfinite(m)], e[np.isfinite(e)]
        rows.append([band, m.size, *(np.percentile(m, [0, 50, 100]) if m.size else [math.nan] * 3),
                     *(np.percentile(e, [50, 95]) if e.size else [math.nan] * 2)])
    ranges = magnitude_ranges(b.cols)
    outside: list[list[Any]] = []
    for q, (lo, hi) in ranges.items():
        for band in BANDS:
            v = b.cols[f"{band}_cmodel_{q}"].astype(float)
            slack = 1e-9 * max(abs(lo), abs(hi))  # a bound that is the data's own extreme, back from log10
            for i in np.flatnonzero(np.isfinite(v) & ((v < lo - slack) | (v > hi + slack))):
                outside.append([f"{band}_cmodel_{q}", float(v[i]), str(int(b.cols["object_id"][i])), float(b.z[i])])
    b.result["magnitudes_outside"] = len(outside)
    lo_p, hi_p = ROBUST_RANGE
    s.blocks += [
        Image(b.figure("magnitudes", plot_magnitudes, b.cols), "magnitude histograms per band",
              f"Top: {{band}}_cmodel_mag between {ranges['mag'][0]:.2f} and {ranges['mag'][1]:.2f}. Bottom: "
              f"{{band}}_cmodel_magsigma (log axis) between {ranges['magsigma'][0]:.3g} and {ranges['magsigma'][1]:.3g}. "
              f"Each axis spans the {lo_p:g}th to {hi_p:g}th percentile over the five bands, widened by a tenth of that "
              f"span on each side, so that a few odd values do not squash the rest; the {len(outside)} values "
              "outside are listed below."),
        Table(["band", "galaxies", "mag min", "mag median", "mag max", "magsigma median", "magsigma 95%"], rows),
        Table(["column", "value", "object_id", "z"], outside[:MAX_LISTED],
              f"values outside the plotted ranges: {len(outside)}"
              + (f" (the first {MAX_LISTED} shown)" if len(outside) > MAX_LISTED else "")),
    ]
    return s


def examples_section(b: Build) -> Section:
    s = Section("Galaxies at increasing redshift", "examples")
    slots = example_candidates(b.z, N_EXAMPLES) if b.has_images else []
    if not slots:
        s.blocks.append("No galaxy has a finite redshift." if b.has_images else "No images in this build.")
        return s
    everyone = [i for slot in slots for i in slot]
    padded = {i: padded_fractions(c["image_flags"]) for i, c in zip(everyone, b.cubes(everyone, ("image_flags",)))}
    picks = [pick_whole(slot, padded) for slot in slots]
    cubes = b.cubes(picks, ("image",))
    examples = [{"z": float(b.z[i]), "image": c["image"]} for i, c in zip(picks, cubes)]
    b.result["examples"] = [int(b.cols["object_id"][i]) for i in picks]
    b.result["examples_padded"] = [padded[i].tolist() for i in picks]
    s.blocks += [
        f"{len(picks)} galaxies at evenly spaced redshift quantiles of the final sample, as in the paper's Figure 1: "
        "colour composites of the g, r, i images (blue, green, red), each scaled from its median (sky) to its 99.5th "
        "percentile; top row linear, bottom row log (ds9's log stretch), which shows faint features and neighbours. "
        "Each band is a cutout placed on the 127 x 127 grid with the rest zero (padded), as in the released files: at "
        "the paper's 10-arcsec half width a cutout is about 119 px, so about 12% of every band is padding; a band cut "
        "short by a patch edge has more, and shows as a colour seam. Of the galaxies nearest each quantile, the one "
        f"with the least padding is shown (of {EXAMPLE_CANDIDATES}); the table gives each band's padded share.",
        Image(b.figure("examples", plot_examples, examples), "example galaxies, linear and log scale"),
        Table(["z", "object_id", "split", "i_cmodel_mag", "padded g / r / i / z / y"],
              [[float(b.z[i]), str(int(b.cols["object_id"][i])), b.cols["split"][i], float(b.cols["i_cmodel_mag"][i]),
                " / ".join(f"{100 * f:.0f}%" for f in padded[i])] for i in picks]),
    ]
    return s


def morphology_example_section(b: Build) -> Section:
    s = Section(f"Morphology of one galaxy ({MORPHOLOGY_BAND} band)", "morphology-example")
    pick = pick_morphology_galaxy(b.cols) if b.has_images else None
    if pick is None:
        s.blocks.append("No galaxy with a complete measurement in this band." if b.has_images else "No images in this build.")
        return s
    from galaxiesml.morphology import Detection, measure_band  # the job's own detection and measurement

    band = BANDS.index(MORPHOLOGY_BAND)
    (cube,) = b.cubes([pick])
    image = measured_image(cube["image"][band], cube["image_flags"][band], b.run.get("padded_pixels", "zero"))
    det = Detection(image)
    central = int(np.argmin(det.distances()))
    stored = {c: float(b.cols[f"{MORPHOLOGY_BAND}_{c}"][pick]) for c in MEASUREMENT_COLUMNS}
    remeasured = measure_band(image, None, fit_sersic=False)
    oid = int(b.cols["object_id"][pick])
    b.result["morphology_example"] = {"object_id": oid, "detections": len(det.objects), "central": central,
                                      "stored": stored, "remeasured": {c: remeasured[c] for c in MEASUREMENT_COLUMNS}}
    s.blocks += [
        f"object_id {oid}, z = {b.z[pick]:.4f} ({b.cols['split'][pick]}): the lowest-redshift galaxy whose "
        f"{MORPHOLOGY_BAND}-band measurement is complete and unflagged, as the paper's Figure 3 shows a low-redshift "
        "galaxy. Detections re-run with galaxiesml.morphology's detection (sep set up as the paper's Source Extractor); "
        "the apertures are drawn from the values stored in the dataset, and the table compares them with measure_band "
        f"run again on the stored image. Left: the {MORPHOLOGY_BAND} image (log scale) with every detection's ellipse "
        f"at {DETECTION_ELLIPSE_SCALE:g} × (A, B), the central galaxy (nearest the centre) in red, and dotted circles "
        f"of {', '.join(map(str, NEIGHBOUR_RADII))} px about the centre (central_image_pop_*). Centre: the "
        "segmentation map, the central galaxy's isophotal footprint bright and other detections dim. Right: the A, B "
        "ellipse at pos_angle (ellipticity = 1 - B/A), the Petrosian aperture petro_rad × (A, B) and the half-light "
        "radius (a circle).",
        Image(b.figure("morphology_example", plot_morphology_example, image, det, central, stored),
              "one galaxy's detections and apertures"),
        Table(["column", "unit", "stored in the dataset", "measured again here (no Sersic fit)"],
              [[c, MORPHOLOGY_UNITS[c], stored[c], remeasured[c]] for c in MEASUREMENT_COLUMNS]),
    ]
    return s


def morphology_section(b: Build) -> Section:
    s = Section("Morphology columns", "morphology")
    if not b.has_images:
        s.blocks.append("No morphology in this build.")
        return s
    values = {(c, band): b.cols[f"{band}_{c}"].astype(float) for c in MEASUREMENT_COLUMNS for band in BANDS}
    median = lambda v: float(np.nanmedian(v)) if np.isfinite(v).any() else math.nan
    s.blocks += [
        "The 13 Source Extractor columns (paper section 4) in all five bands, each panel between the 1st and 99th "
        "percentile over the bands. NaN values (a band that could not be measured) are left out and counted below.",
        Image(b.figure("morphology", plot_morphology_distributions, b.cols), "morphology column histograms",
              " ".join(f"{c}: {note(b.cols)}.".replace("\n", " ") for c, note in PANEL_NOTES.items())
              + " docs/morphology.md gives every column's definition."),
        Table(["column", "unit", *(f"{band} median" for band in BANDS), *(f"{band} NaN" for band in BANDS)],
              [[c, MORPHOLOGY_UNITS[c], *(median(values[c, band]) for band in BANDS),
                *(int(np.count_nonzero(np.isnan(values[c, band]))) for band in BANDS)] for c in MEASUREMENT_COLUMNS],
              "median and number of NaN values per band"),
        Table(["flag", *BANDS],
              [[fl, *(int(np.count_nonzero(b.cols[f"{band}_{fl}"].astype(bool))) for band in BANDS)] for fl in FLAG_COLUMNS],
              "galaxies with each morphology flag set, per band"),
    ]
    return s


def failures_section(b: Build) -> Section:
    f, catalog = b.funnel, b.root / "catalog"
    first = {r["reason"]: r for r in first_rows(sorted(catalog.glob("rejected-*.parquet")), ["reason", "detail", "source", "line"],
                                                 "reason", 1, len(f["rejected_by_reason"]))}
    example = lambda r: f"{Path(str(r['source'])).name}:{r['line']} {r['detail'] or ''}".strip()
    s = Section("Rejections, duplicates and failures", "failures", [
        Table(["reason", "rows", "example (source:line, detail)"],
              [[k, v, example(first[k]) if k in first else ""] for k, v in f["rejected_by_reason"].items()],
              "rejected by the quality cuts (summary.json), with the first such row"),
        Table(["duplicate key", "rows"], [[k, v] for k, v in f["duplicates_by_key"].items()], "duplicates removed"),
    ])
    if not f["failed"]:
        s.blocks.append("No galaxy failed in the image or morphology stages.")
        return s
    failed = first_rows(sorted(catalog.glob("failed-*.parquet")), ["object_id", "stage", "reason", "detail"], "reason", 3, 30)
    s.blocks += [
        Table(["stage", "reason", "galaxies"], [[st, r, v] for st, d in f["failed_by_stage"].items() for r, v in d.items()],
              "galaxies that failed after the catalog stages (summary.json)"),
        Table(["object_id", "stage", "reason", "detail"],
              [[str(r["object_id"]), r["stage"], r["reason"], r["detail"]] for r in failed],
              "up to 3 failed galaxies per reason (catalog/failed-*.parquet)"),
    ]
    return s


def provenance_section(b: Build) -> Section:
    env = versions()
    recorded = b.run.get("versions") if isinstance(b.run.get("versions"), dict) else {}
    if "galaxiesml-builder" not in recorded and "version" in b.run:
        recorded = {"galaxiesml-builder": b.run["version"], **recorded}
    return Section("How it was made", "provenance", [
        Table(["option", "value"], flatten(b.run), 'summary.json "run"'),
        Table(["package", "recorded by the build", "made this card"],
              [[p, recorded.get(p, "not recorded"), env[p]] for p in VERSION_PACKAGES]),
        Table(["files", "count", "size"], file_rows(b.root), "outputs in the directory"),
    ])


SECTIONS = (funnel_section, redshift_section, magnitudes_section, examples_section, morphology_example_section,
            morphology_section, failures_section, provenance_section)


def write_datacard(output_dir: str, dest: str | None = None) -> dict:
    """Write the data card of the build in `output_dir` to `dest` (default <output_dir>/datacard):
    index.html, README.md and img/*.png. Returns what it wrote and the numbers it checked and drew."""
    t0 = time.perf_counter()
    root = Path(output_dir)
    card = Path(dest) if dest else root / CARD_DIR
    img = card / IMG_DIR
    if img.exists():
        shutil.rmtree(img)
    img.mkdir(parents=True)
    b = load_build(root, img)
    sections = [make(b) for make in SECTIONS]
    f, run = b.funnel, b.run
    title = "GalaxiesML data card"
    banner = (f"Synthetic data: this is a demo build, made from a synthetic HSC sky and a local stand-in of the HSC "
              f"cutout service ({run['synthetic_sky']}), not from the HSC archive. Its galaxies, images and "
              "measurements are simulated and must not be used for science." if run.get("synthetic_sky") else "")
    intro = (f"{f['kept']:,} galaxies ({', '.join(f'{k} {v:,}' for k, v in f['kept_by_split'].items())}) built by "
             f"{run.get('tool', 'galaxiesml-builder')} {run.get('version', '')} from {f['rows_read']:,} catalog rows; "
             f"preset {run.get('preset', '?')}. Every number here is read from the output directory's files.")
    (card / "index.html").write_text(render_html(title, intro, sections, banner), encoding="utf-8")
    (card / "README.md").write_text(render_markdown(title, intro, sections, banner), encoding="utf-8")
    return {
        **b.result, "card_dir": str(card), "funnel": f, "galaxies": b.n, "html": str(card / "index.html"),
        "markdown": str(card / "README.md"), "images": [str(p) for p in b.images], "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m galaxiesml.datacard OUTPUT_DIR [--dest DIR]`: write the data card of a built output."""
    ap = argparse.ArgumentParser(prog="python -m galaxiesml.datacard", description=main.__doc__)
    ap.add_argument("output_dir", help="a built output directory (holding summary.json)")
    ap.add_argument("--dest", help="where the card goes (default OUTPUT_DIR/datacard)")
    args = ap.parse_args(argv)
    if not (Path(args.output_dir) / "summary.json").is_file():
        print(f"error: {args.output_dir}: no summary.json (not a built output directory)", file=sys.stderr)
        return 2
    result = write_datacard(args.output_dir, args.dest)
    bad = [c["check"] for c in result["checks"] if not c["ok"]]
    print(f"data card: {result['html']} and {result['markdown']}, {len(result['images'])} figures, {result['seconds']:.1f} s")
    if bad:
        print(f"warning: summary.json disagrees with the files in {len(bad)} counts: {'; '.join(bad)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
