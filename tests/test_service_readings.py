"""The cutout client against every reading of the protocol the real service may make, not only the
one our stand-in makes by default: cutouts rounded to other sizes (117-129 px, odd and even),
members in other orders, lists with comments, an empty list. Each reading must give the galaxy the
same pixels at the same grid positions as the default one, and a whole build the same dataset."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from galaxiesml.cutouts import CENTRE, PADDED, galaxy_image
from galaxiesml.hsc.credentials import Credentials
from galaxiesml.hsc.cutout_client import CutoutClient, CutoutRow, check_member, list_file
from galaxiesml.hsc.format import PAPER_HALF_WIDTH, cutout_pixels, parse_member_name
from galaxiesml.sky import make_sky, write_sky
from galaxiesml.standins.cutout_service import CutoutServer, CutoutService, Reading
from pipeline.cli import main, run, verdict
from tests.conftest import galaxy_targets

PASSWORD = "pw-readings-4!"
CREDS = Credentials("dora", PASSWORD)
#: The readings a test of the client goes through: our default, the one an independent stand-in
#: made (round(2 h / 0.168 + 1) = 120 px, members reversed), and fixed sizes either side.
READINGS = [
    Reading(),
    Reading("round", "reversed"),
    *(Reading(n, order) for n, order in zip(range(117, 130), ["line", "reversed"] * 7)),
]


@pytest.fixture(scope="module")
def sky_rows():
    return make_sky(60, seed=11, patch_px=1000, empty_share=0.0, band_gap_share=0.0, old_filter_share=0.0)


@pytest.fixture(scope="module")
def targets(sky_rows):
    return galaxy_targets(sky_rows[0])[:5]


def fetch(sky, targets, reading: Reading) -> list:
    """The galaxies' decoded images, fetched through the client from a stand-in with `reading`."""
    with CutoutServer(CutoutService(sky, CREDS, reading=reading)) as server:
        with CutoutClient(CREDS, url=server.url, backoff_s=0.001, max_retries=1) as client:
            got = list(client.fetch_galaxies(targets, half_width=PAPER_HALF_WIDTH))
    assert all(g.complete for g in got), [(g.failed, g.missing) for g in got]
    return [galaxy_image(g) for g in got]


@pytest.fixture(scope="module")
def reference(sky_rows, targets):
    return fetch(sky_rows[0], targets, Reading())


def test_the_paper_request_is_119_px_by_default_and_120_rounded():
    assert cutout_pixels(PAPER_HALF_WIDTH) == 119 and cutout_pixels(PAPER_HALF_WIDTH, "round") == 120


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: f"{r.rounding}-{r.member_order}")
def test_every_reading_gives_the_same_pixels_at_the_same_grid_positions(sky_rows, targets, reference, reading):
    images = fetch(sky_rows[0], targets, reading)
    size = cutout_pixels(PAPER_HALF_WIDTH, reading.rounding)
    counts = []
    for ref, img in zip(reference, images):
        both = ((ref.flags | img.flags) & PADDED) == 0
        assert both.any(axis=(1, 2)).all()
        # the same sky pixels (rendered for another box: equal to float32 rounding; a pixel's shift
        # would differ by the noise, ~1e-2)
        np.testing.assert_allclose(np.where(both, img.image, 0), np.where(both, ref.image, 0), rtol=0, atol=1e-5)
        covered = (img.flags & PADDED) == 0
        # the galaxy's pixel is the grid's centre, and the cutout covers what its size allows
        assert covered[:, CENTRE, CENTRE].all()
        counts += covered.sum(axis=(1, 2)).tolist()
    assert max(counts) == min(size, 127) ** 2  # a patch edge may cut some short


def test_members_in_any_order_are_matched_by_line_number(sky_rows, targets):
    rows = [CutoutRow(t.object_id, t.ra, t.dec, f, PAPER_HALF_WIDTH) for t in targets for f in ("HSC-G", "HSC-Z")]
    for order in ("filter", "reversed", "line"):
        with CutoutServer(CutoutService(sky_rows[0], CREDS, reading=Reading(member_order=order))) as server:
            reply = requests.post(server.url, files={"list": ("l.txt", list_file(rows))}, auth=(CREDS.user, PASSWORD))
            import io
            import tarfile

            with tarfile.open(fileobj=io.BytesIO(reply.content)) as tar:
                names = [parse_member_name(m.name) for m in tar.getmembers()]
            lines = [n.lineno for n in names]
            assert sorted(lines) == list(range(2, 2 + len(rows)))
            assert lines == {"filter": sorted(lines, key=lambda k: (rows[k - 2].filter, k)),
                             "reversed": sorted(lines, key=lambda k: (rows[k - 2].filter, k))[::-1],
                             "line": sorted(lines)}[order]
            with CutoutClient(CREDS, url=server.url, backoff_s=0.001) as client:
                results = client.fetch_rows(rows)
            assert [r.row for r in results] == rows and all(r.status == "ok" for r in results)


def test_a_member_is_refused_only_when_it_cannot_be_the_cutout_asked_for(sky_rows, targets):
    t = targets[0]
    row = CutoutRow(t.object_id, t.ra, t.dec, "HSC-I", PAPER_HALF_WIDTH)
    for n in (60, 117, 119, 120, 124, 129, 130):  # a patch edge cuts a cutout short; rounding adds a pixel
        data = sky_rows[0].cutout("HSC-I", t.ra, t.dec, PAPER_HALF_WIDTH, rounding=n).fits_bytes()
        assert check_member(data, row, ("image",)) is None, n
    far_too_big = sky_rows[0].cutout("HSC-I", t.ra, t.dec, PAPER_HALF_WIDTH, rounding=161).fits_bytes()
    assert "shape" in check_member(far_too_big, row, ("image",))


@pytest.mark.parametrize(
    "text, lines",
    [
        # the archive's documentation writes a comment after the column descriptor
        ("#? rerun filter ra dec sw sh # column descriptor\n{row}\n", [2]),
        # blank lines and comment lines between rows, counted in line numbers
        ("#? rerun filter ra dec sw sh\n\n# the next row is line 4\n{row}\n   \n{row} # again\n", [4, 6]),
        # a column the documentation does not name is ignored
        ("#? rerun filter ra dec sw sh note\n{row_note}\n", [2]),
        # only the header: an empty archive, as for rows without coverage
        ("#? rerun filter ra dec sw sh\n", []),
    ],
)
def test_the_standin_takes_every_documented_form_of_the_list(sky_rows, targets, text, lines):
    t = targets[0]
    row = f"pdr2_wide HSC-I {t.ra:.8f} {t.dec:.8f} 10asec 10asec"
    body = text.format(row=row, row_note=row + " whatever")
    with CutoutServer(CutoutService(sky_rows[0], CREDS)) as server:
        reply = requests.post(server.url, files={"list": ("l.txt", body)}, auth=(CREDS.user, PASSWORD))
    assert reply.status_code == 200, reply.text
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(reply.content)) as tar:
        assert sorted(parse_member_name(m.name).lineno for m in tar.getmembers()) == lines


def build_through(tmp_path, sky, rows, reading: Reading, monkeypatch) -> dict:
    """A whole build of `sky`'s catalog through a stand-in with `reading`."""
    paths = write_sky(sky, rows, tmp_path / "input")
    monkeypatch.setenv("HSC_SSP_CAS_USER", CREDS.user)
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", PASSWORD)
    with CutoutServer(CutoutService(sky, CREDS, reading=reading)) as server:
        return run(["--catalog", str(paths["catalog"]), "--output", str(tmp_path / "out"), "--hsc_url", server.url,
                    "--runner=FnApiRunner", "--progress_every=0", "--no_sersic"])


def test_a_build_through_the_other_reading_keeps_every_covered_galaxy_with_the_same_data(tmp_path, sky_rows, monkeypatch):
    sky, rows = sky_rows
    ours = build_through(tmp_path / "floor", sky, rows, Reading(), monkeypatch)
    theirs = build_through(tmp_path / "round", sky, rows, Reading("round", "reversed"), monkeypatch)
    assert ours["funnel"]["kept"] > 0 and theirs["funnel"]["kept"] == ours["funnel"]["kept"]
    assert theirs["funnel"]["failed"] == ours["funnel"]["failed"] == 0
    columns = ["object_id", "split", "i_isophotal_area", "r_half_light_radius", "g_total_galaxies"]
    read = lambda out: pq.read_table(sorted(out.glob("galaxies/*/part-*.parquet")), columns=columns).sort_by("object_id")
    a, b = read(tmp_path / "floor" / "out"), read(tmp_path / "round" / "out")
    assert a.column("object_id").equals(b.column("object_id")) and a.column("split").equals(b.column("split"))
    # one more pixel row and column of sky can move a measurement a little, never the sample
    assert json.loads((tmp_path / "round" / "out" / "summary.json").read_text())["funnel"]["kept"] == a.num_rows


def test_a_build_that_loses_every_galaxy_fails_after_writing_its_outputs(tmp_path, sky_rows, monkeypatch, capsys):
    """130 px cutouts pass the client (within its slack) but cannot be placed on the 127 px grid:
    every galaxy fails (but a few that a patch edge cuts short), and the build must say so, not
    exit 0 as it did with `kept 0`."""
    sky, rows = sky_rows
    paths = write_sky(sky, rows, tmp_path / "input")
    monkeypatch.setenv("HSC_SSP_CAS_USER", CREDS.user)
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", PASSWORD)
    out = tmp_path / "out"
    with CutoutServer(CutoutService(sky, CREDS, reading=Reading(130))) as server:
        code = main(["--catalog", str(paths["catalog"]), "--output", str(out), "--hsc_url", server.url,
                     "--runner=FnApiRunner", "--progress_every=0", "--no_sersic"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    funnel = json.loads((out / "summary.json").read_text())["funnel"]
    lost = funnel["failed_by_stage"]["cutout"]["wrong_size"]
    assert lost >= 0.9 * funnel["catalog_kept"] > 0
    assert err == (f"error: the build lost {lost} of {funnel['catalog_kept']} galaxies ({lost / funnel['catalog_kept']:.1%}) "
                   f"to failures (wrong_size {lost}), more than --max_failed_fraction 0.05: see catalog/failed-*.parquet")
    failed = pq.read_table(sorted(out.glob("catalog/failed-*.parquet")))
    assert failed.num_rows == funnel["failed"] and (out / "datacard" / "index.html").is_file()
    assert "completed" not in json.loads((out / "build.json").read_text())  # a rerun tries again


def test_losing_more_than_the_allowed_share_fails_and_no_coverage_is_no_loss():
    funnel = {"rows_read": 100, "catalog_kept": 50, "kept": 40, "failed_by_stage": {"cutout": {"no_coverage": 10}}}
    assert verdict(funnel, 0.05) is None  # the archive has no image of 10: not the build's loss
    funnel["failed_by_stage"]["cutout"]["fetch_failed"] = 3
    assert verdict(funnel, 0.05) == (
        "the build lost 3 of 50 galaxies (6.0%) to failures (fetch_failed 3), more than --max_failed_fraction 0.05: "
        "see catalog/failed-*.parquet"
    )
    assert verdict(funnel, 0.1) is None
    assert verdict({**funnel, "kept": 0}, 1.0).startswith("the build kept no galaxy")


def test_a_wrong_password_fails_before_the_job_in_one_line(tmp_path, sky_rows, monkeypatch, capsys):
    sky, rows = sky_rows
    paths = write_sky(sky, rows, tmp_path / "input")
    monkeypatch.setenv("HSC_SSP_CAS_USER", CREDS.user)
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", "not-" + PASSWORD)
    with CutoutServer(CutoutService(sky, CREDS)) as server:
        code = main(["--catalog", str(paths["catalog"]), "--output", str(tmp_path / "out"), "--hsc_url", server.url,
                     "--runner=FnApiRunner"])
        assert server.service.status_counts == {401: 1}  # the check alone: no job ran
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err == (f"error: the HSC cutout service at {server.url} refused the account 'dora' (HTTP 401): check "
                   "HSC_SSP_CAS_USER and HSC_SSP_CAS_PASSWORD")
    assert PASSWORD not in err and not (tmp_path / "out" / "summary.json").exists()


def test_a_client_that_resets_its_connection_prints_nothing(sky_rows, capsys):
    """The demo printed socketserver's traceback for a keep-alive connection its client reset."""
    import socket
    import struct
    import time

    with CutoutServer(CutoutService(sky_rows[0], CREDS)) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        for _ in range(3):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /das_cutout/pdr2/cgi-bin/cutout HTTP/1.1\r\nHost: x\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
            s.close()
        time.sleep(0.3)
    assert "Traceback" not in capsys.readouterr().err
