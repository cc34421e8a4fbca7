"""The data card of a small demo build: every part there and non-trivial, every number from the
files, the galaxy Parquet streamed (images only for the galaxies drawn), and the page rendering
in headless Chromium without a missing image."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread

from galaxiesml import datacard
from galaxiesml.dataset import cube_numpy
from galaxiesml.morphology import MEASUREMENT_COLUMNS
from galaxiesml.schema import BANDS, FAILED_SCHEMA
from pipeline import demo as demo_module
from pipeline.cli import run

CHROMIUM = Path("/usr/bin/chromium")
CUBE_COLUMNS = {"image", "image_64", "image_flags"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = demo_module.demo(
        ["--galaxies", "60", "--seed", "3", "--output", str(out), "--runner=FnApiRunner", "--galaxies_per_shard", "8"],
        run,
    )
    return out, summary


@pytest.fixture(scope="module")
def card(built):
    """The card of the demo build, with every Parquet read it made recorded."""
    out, _ = built
    reads: list[dict] = []
    original = pq.ParquetFile.iter_batches

    def recording(self, *args, **kwargs):
        entry = {"columns": set(kwargs.get("columns") or []), "row_groups": kwargs.get("row_groups"),
                 "batch_size": kwargs.get("batch_size"), "rows": 0}
        reads.append(entry)
        for batch in original(self, *args, **kwargs):
            entry["rows"] += batch.num_rows
            yield batch

    mp = pytest.MonkeyPatch()
    mp.setattr(pq.ParquetFile, "iter_batches", recording)
    try:
        result = datacard.write_datacard(str(out))
    finally:
        mp.undo()
    return result, reads


class Tables(HTMLParser):
    """Every <table> of a page as (caption, [[cell text, ...], ...]) and every <img> src."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(("", []))
        elif tag == "caption":
            self._caption = []
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "caption" and self._caption is not None:
            self.tables[-1] = ("".join(self._caption), self.tables[-1][1])
            self._caption = None

    def handle_data(self, data):
        for buf in (self._cell, self._caption):
            if buf is not None:
                buf.append(data)

    def find(self, header: list[str]) -> list[list[str]]:
        """The body rows of the table whose header row starts with `header`."""
        for _, rows in self.tables:
            if rows and rows[0][: len(header)] == header:
                return rows[1:]
        raise AssertionError(f"no table with header {header}")


def page(card_result) -> Tables:
    return Tables(Path(card_result["html"]).read_text())


def markdown_rows(text: str, header: list[str]) -> list[list[str]]:
    """Body rows of the Markdown table whose header starts with `header` (cells unescaped)."""
    lines = text.splitlines()
    cells = lambda line: [re.sub(r"\\(.)", r"\1", c.strip()) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
    for k, line in enumerate(lines):
        if line.startswith("|") and cells(line)[: len(header)] == header:
            rows = []
            for body in lines[k + 2 :]:
                if not body.startswith("|"):
                    break
                rows.append(cells(body))
            return rows
    raise AssertionError(f"no Markdown table with header {header}")


def count(cell: str) -> int:
    return int(cell.replace(",", ""))


def expected_funnel(f: dict) -> dict[str, int]:
    return {
        "rows read": f["rows_read"],
        "rejected by the quality cuts": f["rejected"],
        **{f"– rejected: {k}": v for k, v in f["rejected_by_reason"].items()},
        "duplicates removed": f["duplicates"],
        **{f"– duplicate {k}": v for k, v in f["duplicates_by_key"].items()},
        "kept by the catalog stages": f["catalog_kept"],
        **{f"– catalog kept: {k}": v for k, v in f["catalog_kept_by_split"].items()},
        "failed in the image and morphology stages": f["failed"],
        **{f"– failed: {s} / {r}": v for s, d in f["failed_by_stage"].items() for r, v in d.items()},
        "final sample": f["kept"],
        **{f"– {k}": v for k, v in f["kept_by_split"].items()},
    }


def assert_png_shows_something(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = imread(path)  # decodes, or raises
    h, w = pixels.shape[:2]
    assert h >= 150 and w >= 300, (path, pixels.shape)
    rgb = (pixels[..., :3].reshape(-1, 3) * 255).astype(np.uint32)
    assert rgb.std() > 10, f"{path} is blank"
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert colours.size > 20, f"{path} has almost no colours"


def test_every_figure_is_referenced_decodes_and_shows_something(card):
    result, _ = card
    card_dir = Path(result["card_dir"])
    html_images = page(result).images
    md_images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", Path(result["markdown"]).read_text())
    assert html_images == md_images  # the same figures, in the same order, in both
    assert len(html_images) == 6 and len(set(html_images)) == 6
    assert sorted(p.name for p in (card_dir / "img").iterdir()) == sorted(Path(s).name for s in html_images)
    for src in html_images:
        assert not src.startswith(("/", "file:")), src  # relative, so the card can be moved
        assert_png_shows_something(card_dir / src)
    for cutouts in ("examples.png", "morphology_example.png"):  # galaxy images, not just axes and lines
        rgb = (imread(card_dir / "img" / cutouts)[..., :3].reshape(-1, 3) * 255).astype(np.uint32)
        assert np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]).size > 1000, cutouts


def test_funnel_tables_hold_summary_counts(built, card):
    out, _ = built
    result, _ = card
    f = json.loads((out / "summary.json").read_text())["funnel"]
    expected = expected_funnel(f)
    md = Path(result["markdown"]).read_text()
    for rows in (page(result).find(["step", "rows"]), markdown_rows(md, ["step", "rows"])):
        assert {r[0]: count(r[1]) for r in rows} == expected
        read = next(count(r[1]) for r in rows if r[0] == "rows read")
        assert read == f["rejected"] + f["duplicates"] + f["failed"] + f["kept"]
    rejected = page(result).find(["reason", "rows"])
    assert {r[0]: count(r[1]) for r in rejected} == f["rejected_by_reason"]
    assert {r[0]: count(r[1]) for r in page(result).find(["duplicate key", "rows"])} == f["duplicates_by_key"]
    assert all(r[2] for r in rejected)  # an example row for every reason
    assert_failures_shown(page(result), Path(result["html"]).read_text(), f)


def assert_failures_shown(tables: Tables, text: str, f: dict) -> None:
    """The failures table holds summary.json's counts by stage and reason (or the card says none failed)."""
    if not f["failed"]:
        assert "No galaxy failed" in text
        return
    by_reason = {(r[0], r[1]): count(r[2]) for r in tables.find(["stage", "reason", "galaxies"])}
    assert by_reason == {(st, r): v for st, d in f["failed_by_stage"].items() for r, v in d.items()}
    examples = tables.find(["object_id", "stage", "reason", "detail"])
    assert {(r[1], r[2]) for r in examples} == set(by_reason) and all(r[3] for r in examples)


def test_summary_agrees_with_the_files(card):
    result, _ = card
    checks = result["checks"]
    assert checks and all(c["ok"] for c in checks)
    rows = page(result).find(["count", "summary.json", "files", "agree"])
    assert len(rows) == len(checks) and {r[3] for r in rows} == {"yes"}
    assert any(r[0].startswith("galaxies/training/") for r in rows)
    assert f"{len(checks)} of {len(checks)} counts agree" in Path(result["html"]).read_text()


def test_distributions_come_from_the_galaxy_parquet(built, card):
    out, summary = built
    result, _ = card
    files = sorted(out.glob("galaxies/*/part-*.parquet"))
    table = pq.read_table(files, columns=[c for c in pq.read_schema(files[0]).names if c not in CUBE_COLUMNS])
    z = table.column("specz_redshift").to_numpy()
    tables = page(result)
    rows = {r[0]: r for r in tables.find(["split", "galaxies", "min"])}
    assert count(rows["all"][1]) == summary["funnel"]["kept"] == len(z)
    assert rows["all"][2] == datacard.fmt(z.min()) and rows["all"][6] == datacard.fmt(z.max())
    assert rows["all"][4] == datacard.fmt(float(np.median(z)))
    for split, n in summary["funnel"]["kept_by_split"].items():
        assert count(rows[split][1]) == n
    mags = {r[0]: r for r in tables.find(["band", "galaxies", "mag min"])}
    assert list(mags) == list(BANDS)
    for b in BANDS:
        m = table.column(f"{b}_cmodel_mag").to_numpy()
        assert count(mags[b][1]) == len(m) and mags[b][3] == datacard.fmt(float(np.median(m)))
    morph = {r[0]: r for r in tables.find(["column", "unit", "g median"])}
    assert list(morph) == list(MEASUREMENT_COLUMNS)  # all 13 columns
    for c in MEASUREMENT_COLUMNS:
        for k, b in enumerate(BANDS):
            v = table.column(f"{b}_{c}").to_numpy(zero_copy_only=False).astype(float)
            assert morph[c][2 + k] == datacard.fmt(float(np.nanmedian(v))), (c, b)
            assert int(morph[c][7 + k]) == int(np.isnan(v).sum())
    flags = {r[0]: r for r in tables.find(["flag", *BANDS])}
    i_no_detection = table.column("i_no_detection").to_numpy(zero_copy_only=False)
    assert count(flags["no_detection"][1 + BANDS.index("i")]) == int(np.sum(i_no_detection))


def test_examples_at_increasing_redshift_and_only_their_images_read(built, card):
    out, _ = built
    result, reads = card
    rows = page(result).find(["z", "object_id", "split"])
    assert len(rows) == datacard.N_EXAMPLES
    zs = [float(r[0]) for r in rows]
    assert zs == sorted(zs) and zs[0] < zs[-1]
    table = pq.read_table(sorted(out.glob("galaxies/*/part-*.parquet")), columns=["object_id", "specz_redshift", "split"])
    by_id = {o: (z, s) for o, z, s in zip(*(table.column(c).to_pylist() for c in ("object_id", "specz_redshift", "split")))}
    for r in rows:
        z, split = by_id[int(r[1])]
        assert datacard.fmt(z) == r[0] and split == r[2]
    # streaming: tabular reads never touch a cube column; cube reads name the row groups they need;
    # the candidates' flag planes are read to choose whole examples, images only for those drawn
    cube_reads = [e for e in reads if e["columns"] & CUBE_COLUMNS]
    assert all(e["columns"] for e in reads)  # no read takes every column
    assert cube_reads and all(e["row_groups"] is not None and e["batch_size"] <= 4 for e in cube_reads)
    assert result["cubes_read"] <= datacard.N_EXAMPLES * (datacard.EXAMPLE_CANDIDATES + 1) + 1
    image_reads = [e for e in cube_reads if "image" in e["columns"]]
    assert sum(e["rows"] for e in image_reads) < result["galaxies"]


def test_read_cubes_finds_rows_across_row_groups(built, tmp_path):
    out, _ = built
    shard = sorted(out.glob("galaxies/training/part-*.parquet"))[0]
    table = pq.read_table(shard)
    small = tmp_path / "rg.parquet"
    pq.write_table(table, small, row_group_size=3)
    rows = [0, 4, table.num_rows - 1]
    got = datacard.read_cubes(small, rows, ["image", "image_flags"])
    want = cube_numpy(table.column("image"))
    assert sorted(got) == rows
    for r in rows:
        np.testing.assert_array_equal(got[r]["image"], want[r])


def test_one_galaxy_morphology_drawn_from_its_stored_measurement(built, card):
    out, _ = built
    result, _ = card
    m = result["morphology_example"]
    assert m["detections"] >= 1
    for c in MEASUREMENT_COLUMNS:
        if c != "sersic_index":  # measured again without the fit
            assert m["remeasured"][c] == pytest.approx(m["stored"][c], rel=1e-6, abs=1e-9), c
    files = sorted(out.glob("galaxies/*/part-*.parquet"))
    table = pq.read_table(files, columns=["object_id", "specz_redshift", "i_major_axis", "i_sersic_index"])
    row = table.filter(pc.equal(table.column("object_id"), m["object_id"])).to_pylist()[0]
    assert row["i_major_axis"] == m["stored"]["major_axis"] and row["i_sersic_index"] == m["stored"]["sersic_index"]
    shown = {r[0]: r for r in page(result).find(["column", "unit", "stored in the dataset"])}
    assert list(shown) == list(MEASUREMENT_COLUMNS)
    assert shown["major_axis"][2] == datacard.fmt(m["stored"]["major_axis"])
    assert str(m["object_id"]) in Path(result["html"]).read_text()


def test_options_and_versions_recorded(built, card):
    out, _ = built
    result, _ = card
    run_info = json.loads((out / "summary.json").read_text())["run"]
    options = {r[0]: r[1] for r in page(result).find(["option", "value"])}
    assert options["preset"] == run_info["preset"] and options["cutouts.half_width"] == datacard.fmt(run_info["cutouts"]["half_width"])
    assert set(options) == {k for k, _ in datacard.flatten(run_info)}
    versions = {r[0]: r for r in page(result).find(["package", "recorded by the build", "made this card"])}
    assert list(versions) == list(datacard.VERSION_PACKAGES)
    import apache_beam, numpy, pyarrow, sep, astropy

    for name, module in (("apache-beam", apache_beam), ("numpy", numpy), ("pyarrow", pyarrow), ("sep", sep), ("astropy", astropy)):
        assert versions[name][2] == module.__version__
    assert versions["galaxiesml-builder"][1] == run_info["version"]


INJECTED = [("cutout", "fetch_failed", "g band: HTTP 502 after 6 retries"), ("morphology", "error", "ValueError: boom")]


def with_failures(out: Path, dest: Path) -> dict:
    """A copy of the build in which two more training galaxies failed (one in each stage),
    consistently: gone from their shard, in failed-*.parquet, and counted in summary.json."""
    shutil.copytree(out, dest, ignore=shutil.ignore_patterns("input", "cache", "datacard"))
    shard = sorted((dest / "galaxies" / "training").glob("part-*.parquet"))[0]
    table = pq.read_table(shard)
    gone, keep = table.slice(0, 2), table.slice(2)
    pq.write_table(keep, shard, row_group_size=64)
    failed_paths = sorted((dest / "catalog").glob("failed-*.parquet"))
    before = pq.read_table(failed_paths).to_pylist() if failed_paths else []
    for path in failed_paths:
        path.unlink()
    added = [{"source": r["source"], "line": r["line"], "object_id": r["object_id"], "specz_name": r["specz_name"],
              "stage": st, "reason": rs, "detail": d} for r, (st, rs, d) in zip(gone.to_pylist(), INJECTED)]
    pq.write_table(pa.Table.from_pylist(before + added, schema=FAILED_SCHEMA), dest / "catalog" / "failed-00000-of-00001.parquet")
    summary = json.loads((dest / "summary.json").read_text())
    f = summary["funnel"]
    for st, rs, _ in INJECTED:
        f["failed_by_stage"].setdefault(st, {})[rs] = f["failed_by_stage"].get(st, {}).get(rs, 0) + 1
    f["failed"] += 2
    f["kept"] -= 2
    f["kept_by_split"]["training"] -= 2
    (dest / "summary.json").write_text(json.dumps(summary))
    return summary


def test_failures_shown_by_stage_and_reason_from_the_command_line(built, tmp_path, capsys):
    out, _ = built
    summary = with_failures(out, tmp_path / "build")
    dest = tmp_path / "card"
    assert datacard.main([str(tmp_path / "build"), "--dest", str(dest)]) == 0
    assert "data card:" in capsys.readouterr().out
    text = (dest / "index.html").read_text()
    tables = Tables(text)
    assert {r[0]: count(r[1]) for r in tables.find(["step", "rows"])} == expected_funnel(summary["funnel"])
    assert_failures_shown(tables, text, summary["funnel"])
    details = {r[3] for r in tables.find(["object_id", "stage", "reason", "detail"])}
    assert {d for _, _, d in INJECTED} <= details
    assert {r[3] for r in tables.find(["count", "summary.json", "files", "agree"])} == {"yes"}
    assert (dest / "README.md").is_file() and len(list((dest / "img").glob("*.png"))) == 6


def test_a_summary_that_disagrees_with_the_files_is_flagged(built):
    out, summary = built
    f = json.loads(json.dumps(summary["funnel"]))
    f["kept_by_split"]["training"] += 1
    f["rejected_by_reason"]["redshift_range"] = f["rejected_by_reason"].get("redshift_range", 0) + 5
    f["rows_read"] += 6
    by_split = dict(summary["funnel"]["kept_by_split"])
    bad = {c["check"] for c in datacard.consistency_checks(out, f, by_split) if not c["ok"]}
    assert bad == {
        "galaxies/training/part-*.parquet rows",
        "catalog/rejected-*.parquet, reason = redshift_range",
        "rows read, accounted for by the files",
    }


def test_not_a_build_directory(tmp_path, capsys):
    assert datacard.main([str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


def chromium_dom(page_path: Path, profile: Path) -> str:
    """The page's DOM after load, as headless Chromium renders it from disk."""
    args = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page_path.as_uri(),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def image_check(dom: str) -> dict[str, str]:
    m = re.search(r'<p id="image-check"([^>]*)>', dom)
    assert m, "the page's image check did not run"
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', m.group(1)))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (/usr/bin/chromium: apt-get install chromium)")
def test_page_renders_in_chromium_without_missing_images(card, tmp_path):
    result, _ = card
    n = len(page(result).images)
    state = image_check(chromium_dom(Path(result["html"]), tmp_path / "profile"))
    assert state == {"total": str(n), "loaded": str(n), "missing": ""}
    # and the check catches a missing figure
    broken = tmp_path / "broken"
    shutil.copytree(result["card_dir"], broken)
    (broken / "img" / "examples.png").unlink()
    state = image_check(chromium_dom(broken / "index.html", tmp_path / "profile2"))
    assert state == {"total": str(n), "loaded": str(n - 1), "missing": "img/examples.png"}


# -- what an astronomer who did not build it needs told ---------------------------------------------
def test_a_demo_cards_says_its_data_are_synthetic_and_shows_no_loopback_address(built, card):
    result, _ = card
    html_text = Path(result["html"]).read_text()
    md_text = Path(result["markdown"]).read_text()
    assert 'class="banner"' in html_text and "Synthetic data: this is a demo build" in html_text
    assert md_text.splitlines()[2].startswith("> **Synthetic data: this is a demo build")
    for text in (html_text, md_text):
        assert "127.0.0.1" not in text and "localhost" not in text and "http://" not in text


def test_a_card_of_real_data_has_no_banner(tmp_path):
    text = datacard.render_html("t", "intro", [], banner="")
    assert 'class="banner"' not in text and "Synthetic" not in text


def test_magnitude_axes_follow_robust_ranges_and_list_what_falls_outside(built, tmp_path):
    """One galaxy at i = 0.0158 (it passes the paper's 0 < mag < 50) once stretched every panel to 0-25."""
    out, _ = built
    cols = datacard.load_build(out, tmp_path).cols
    odd = int(np.argmax(cols["specz_redshift"]))
    cols["i_cmodel_mag"] = cols["i_cmodel_mag"].astype(float).copy()
    cols["i_cmodel_mag"][odd] = 0.0158
    lo, hi = datacard.magnitude_ranges(cols)["mag"]
    assert lo > 15 and hi < 30  # the rest's range, not 0-25
    b = datacard.load_build(out, tmp_path)
    b.cols = cols
    section = datacard.magnitudes_section(b)
    (listed,) = [t for t in section.blocks if isinstance(t, datacard.Table) and t.headers[:2] == ["column", "value"]]
    assert ["i_cmodel_mag", 0.0158, str(int(cols["object_id"][odd])), float(cols["specz_redshift"][odd])] in listed.rows
    assert f"values outside the plotted ranges: {len(listed.rows)}" in listed.caption


def test_examples_prefer_whole_cutouts_and_give_each_bands_padding():
    normal, cut = np.full(5, 0.122), np.array([0.122, 0.40, 0.122, 0.122, 0.122])
    # the nearest candidate has its r band cut by a patch edge: the next whole one is taken
    assert datacard.pick_whole([7, 3, 9], {7: cut, 3: normal, 9: normal}) == 3
    assert datacard.pick_whole([7, 3], {7: normal, 3: normal}) == 7
    assert datacard.pick_whole([7, 3], {7: cut, 3: cut}) == 7  # none whole: the nearest
    flags = np.zeros((5, 127, 127), np.uint8)
    flags[:, :4] = datacard.PADDED
    flags[1, :, :50] = datacard.PADDED
    fractions = datacard.padded_fractions(flags)
    assert fractions[0] == pytest.approx(4 / 127) and fractions[1] == pytest.approx((4 * 127 + 123 * 50) / 127**2)
    slots = datacard.example_candidates(np.arange(100.0), 4, per_slot=3)
    assert [s[0] for s in slots] == [12, 37, 62, 87] and len({i for s in slots for i in s}) == 12


def test_examples_caption_gives_padding_per_band(card):
    result, _ = card
    rows = page(result).find(["z", "object_id", "split", "i_cmodel_mag", "padded g / r / i / z / y"])
    for row, fractions in zip(rows, result["examples_padded"]):
        assert row[4] == " / ".join(f"{100 * f:.0f}%" for f in fractions)


def test_petro_cap_and_negative_surface_brightness_are_explained(card):
    result, _ = card
    text = Path(result["html"]).read_text()
    assert f"at {datacard.PETRO_CAP}: SE&#x27;s cap" in text or f"at {datacard.PETRO_CAP}: SE's cap" in text
    assert "the paper&#x27;s zero point is 0" in text or "the paper's zero point is 0" in text
