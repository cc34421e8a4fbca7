"""The catalog job client against the loopback stand-in: submit / status / download as in the
HSC notes, the export format, polling backoff, job errors, auth, and retries through faults."""
from __future__ import annotations

import gzip
import io
import logging
import time

import pyarrow.csv as pacsv
import pytest

from galaxiesml.hsc.catalog_client import CLIENT_VERSION, CatalogClient, HscJobError
from galaxiesml.hsc.credentials import Credentials, HscAuthError
from galaxiesml.schema import CATALOG_FIELDS, appendix_a_sql
from galaxiesml.standins.catalog_service import CatalogServer, CatalogService
from galaxiesml.standins.faults import FaultPlan, Faults
from galaxiesml.synthetic_catalog import make_catalog

PASSWORD = "cat-pw-7731!"
CREDS = Credentials("bob", PASSWORD)


@pytest.fixture(scope="module")
def rows():
    return make_catalog(300, seed=11)[0]


def _read_export(data: bytes):
    """Parse an HSC CSV export: skip '#' metadata, take the '# '-prefixed header row as names."""
    lines = data.decode().splitlines()
    header = [ln for ln in lines if ln.startswith("# object_id,")]
    assert len(header) == 1 and all(ln.startswith("#") for ln in lines[: lines.index(header[0])])
    names = header[0][2:].split(",")
    body = "\n".join(ln for ln in lines if not ln.startswith("#")).encode()
    return pacsv.read_csv(io.BytesIO(body), pacsv.ReadOptions(column_names=names))


def _client(url: str, **kw) -> CatalogClient:
    return CatalogClient(CREDS, url=url, poll_initial_s=0.01, backoff_s=0.001, timeout=(5, 30), **kw)


def test_appendix_a_query_round_trip(rows, tmp_path):
    with CatalogServer(CatalogService(rows, CREDS)) as srv:
        client = _client(srv.url)
        path = client.run_query(tmp_path / "cat.csv")
        job = srv.service.jobs[1]
    assert job.sql == appendix_a_sql()
    assert job.request["clientVersion"] == CLIENT_VERSION
    assert job.request["catalog_job"] == {
        "sql": appendix_a_sql(), "out_format": "csv", "include_metainfo_to_body": True, "release_version": "pdr2",
    }
    assert job.request["nomail"] is True and job.request["skip_syntax_check"] is True
    table = _read_export(path.read_bytes())
    assert table.column_names == [f.name for f in CATALOG_FIELDS]
    assert table.column("object_id").to_pylist() == rows.column("object_id").to_pylist()
    assert "g_cmodel_magsigma" in table.column_names


def test_status_is_polled_with_doubling_intervals(rows, tmp_path):
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        time.sleep(s)

    with CatalogServer(CatalogService(rows, CREDS, waiting_s=0.1, running_s=0.2)) as srv:
        client = _client(srv.url, sleep=sleep, poll_max_s=0.08)
        job = client.submit("SELECT 1", "csv.gz")
        assert job["status"] == "waiting" and job["id"] == 1
        seen = {client.status(job["id"])["status"]}
        done = client.wait(job["id"])
        path = client.download(job["id"], tmp_path / "out.csv.gz")
    assert done["status"] == "done" and done["filesize"] == path.stat().st_size
    assert seen <= {"waiting", "running"}
    assert waits[:3] == [0.01, 0.02, 0.04] and max(waits) == 0.08
    assert _read_export(gzip.decompress(path.read_bytes())).num_rows == rows.num_rows


def test_failed_job_raises(rows, tmp_path):
    with CatalogServer(CatalogService(rows, CREDS)) as srv:
        with pytest.raises(HscJobError, match="SELECT"):
            _client(srv.url).run_query(tmp_path / "x.csv", sql="DROP TABLE pdr2_wide.forced")
    assert not (tmp_path / "x.csv").exists()


def test_bad_password_raises_without_leaking_it(rows, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = Credentials("bob", "nope-" + PASSWORD)
    with CatalogServer(CatalogService(rows, CREDS)) as srv:
        client = CatalogClient(wrong, url=srv.url)
        with pytest.raises(HscAuthError) as err:
            client.submit("SELECT 1")
    assert "401" in str(err.value)
    for text in (str(err.value), repr(err.value), repr(client), caplog.text):
        assert PASSWORD not in text


def test_each_stream_draws_its_own_faults():
    def downloads(status_polls: int) -> list[str | None]:
        plan = FaultPlan(Faults.spread(0.5, seed=3))
        drawn = []
        for _ in range(20):
            for _ in range(status_polls):
                plan.draw(stream="status")
            drawn.append(plan.draw(stream="download"))
        return drawn

    assert downloads(0) == downloads(3) != [None] * 20
    shared = FaultPlan(Faults.spread(0.5, seed=3))
    assert [shared.draw() for _ in range(20)] != downloads(0)


def test_query_survives_faults(rows, tmp_path):
    # Each endpoint draws its own faults, so submit's and download's are fixed by the seed (seed 3:
    # 502s, 503s, a drop and a truncated download among them); status polls, as many as timing gives,
    # only add to the counts.
    faults = Faults.spread(0.5, seed=3, kinds=("http_502", "http_503", "drop", "truncate"))
    with CatalogServer(CatalogService(rows, CREDS, faults)) as srv:
        client = _client(srv.url, max_retries=10)
        paths = [client.run_query(tmp_path / f"cat{k}.csv") for k in range(3)]
        counts = srv.service.faults.counts
    assert sum(counts.values()) >= 4 and sum(counts[k] > 0 for k in ("http_502", "http_503", "drop")) >= 2, counts
    assert counts["truncate"] >= 1, counts
    for path in paths:
        table = _read_export(path.read_bytes())
        assert table.column("object_id").to_pylist() == rows.column("object_id").to_pylist()
