"""Client of the HSC PDR2 catalog job API (see docs/hsc-services.md).

Every call is a POST of JSON carrying {"credential": {...}, "clientVersion": 20190514.1}: `submit`
a SQL job, poll `status` (waiting | running | done | error) with backoff from 1 s up to 300 s, then
`download` the result to a file. 401 raises HscAuthError without the password; transient server
errors and dropped connections are retried with exponential backoff.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import requests

from galaxiesml.hsc.credentials import Credentials, HscAuthError, HscError
from galaxiesml.schema import appendix_a_sql

log = logging.getLogger(__name__)

PDR2_CATALOG_URL = "https://hsc-release.mtk.nao.ac.jp/datasearch/api/catalog_jobs/"
CLIENT_VERSION = 20190514.1
OUT_FORMATS = ("csv", "csv.gz", "sqlite3", "fits")
RETRY_STATUSES = frozenset({500, 502, 503, 504})


class HscJobError(HscError):
    """A catalog job ended in `error`, or did not finish in time."""


class HscCatalogRequestError(HscError):
    """The catalog service refused a call (a 4xx other than 401)."""


class CatalogClient:
    """Runs SQL jobs on the HSC catalog service (or a stand-in at `url`)."""

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        url: str = PDR2_CATALOG_URL,
        release_version: str = "pdr2",
        timeout: tuple[float, float] = (10.0, 300.0),
        max_retries: int = 5,
        backoff_s: float = 2.0,
        poll_initial_s: float = 1.0,
        poll_max_s: float = 300.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._credentials = credentials or Credentials.from_env()
        self.url = url if url.endswith("/") else url + "/"
        self.release_version = release_version
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.session = session or requests.Session()
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"CatalogClient(url={self.url!r}, user={self._credentials.user!r})"

    def _payload(self, **fields: Any) -> dict[str, Any]:
        return {
            "credential": {"account_name": self._credentials.user, "password": self._credentials.password},
            "clientVersion": CLIENT_VERSION,
            **fields,
        }

    def _call(self, endpoint: str, payload: dict[str, Any], stream: bool = False) -> requests.Response:
        """POST `payload` to `endpoint`, retrying transient failures; the 200 reply."""
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.info("catalog %s: %s; retrying in %.2f s", endpoint, reason, delay)
                self._sleep(delay)
            try:
                reply = self.session.post(self.url + endpoint, json=payload, timeout=self.timeout, stream=stream)
            except (requests.ConnectionError, requests.Timeout) as e:
                reason = f"connection failed: {type(e).__name__}"
                continue
            if reply.status_code == 401:
                raise HscAuthError(f"the catalog service refused the account {self._credentials.user!r} (HTTP 401)")
            if reply.status_code in RETRY_STATUSES:
                reason = f"HTTP {reply.status_code}"
                reply.close()
                continue
            if reply.status_code != 200:
                raise HscCatalogRequestError(f"catalog {endpoint} answered HTTP {reply.status_code}: {reply.text[:300]}")
            return reply
        raise HscError(f"catalog {endpoint} failed after {self.max_retries} retries: {reason}")

    def submit(self, sql: str, out_format: str = "csv") -> dict[str, Any]:
        """Submit a job; the job record ({id, name, status, ...})."""
        if out_format not in OUT_FORMATS:
            raise ValueError(f"out_format must be one of {OUT_FORMATS}")
        job = {
            "sql": sql,
            "out_format": out_format,
            "include_metainfo_to_body": True,
            "release_version": self.release_version,
        }
        return self._call("submit", self._payload(catalog_job=job, nomail=True, skip_syntax_check=True)).json()

    def status(self, job_id: int) -> dict[str, Any]:
        """The job record, with `status` in waiting | running | done | error."""
        return self._call("status", self._payload(id=job_id)).json()

    def wait(self, job_id: int, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the job is done (its record) or raise HscJobError on error or timeout; the
        interval doubles from poll_initial_s up to poll_max_s."""
        start = time.monotonic()
        interval = self.poll_initial_s
        while True:
            job = self.status(job_id)
            if job.get("status") == "done":
                return job
            if job.get("status") == "error":
                raise HscJobError(f"catalog job {job_id} failed: {job.get('error', 'unknown error')}")
            if timeout_s is not None and time.monotonic() - start + interval > timeout_s:
                raise HscJobError(f"catalog job {job_id} not done after {timeout_s} s (status {job.get('status')})")
            self._sleep(interval)
            interval = min(self.poll_max_s, interval * 2)

    def download(self, job_id: int, path: str | Path) -> Path:
        """Stream the job's result into `path` (written whole or not at all)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".part{os.getpid()}")
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                with self._call("download", self._payload(id=job_id), stream=True) as reply, tmp.open("wb") as f:
                    for chunk in reply.iter_content(1 << 16):
                        f.write(chunk)
                tmp.replace(path)
                return path
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                reason = f"download interrupted: {type(e).__name__}"
                log.info("catalog download of job %s: %s", job_id, reason)
        tmp.unlink(missing_ok=True)
        raise HscError(f"catalog download of job {job_id} failed after {self.max_retries} retries: {reason}")

    def cancel(self, job_id: int) -> None:
        self._call("cancel", self._payload(id=job_id))

    def delete(self, job_id: int) -> None:
        self._call("delete", self._payload(id=job_id))

    def run_query(
        self, path: str | Path, sql: str | None = None, out_format: str = "csv", timeout_s: float | None = None
    ) -> Path:
        """Submit `sql` (the paper's Appendix A query by default), wait, download to `path`."""
        job = self.submit(sql or appendix_a_sql(), out_format)
        self.wait(job["id"], timeout_s)
        return self.download(job["id"], path)
