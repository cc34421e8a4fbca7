"""A loopback stand-in of the HSC PDR2 catalog job API (submit / status / download / cancel /
delete / preview, JSON POSTs carrying the credential), serving a synthetic catalog in the real
export format (galaxiesml.synthetic_catalog.hsc_csv_bytes). A submitted job waits, runs, then is
done (or `error` for SQL that is not a SELECT); faults come from a seeded FaultPlan."""
from __future__ import annotations

import gzip
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from galaxiesml.hsc.credentials import Credentials
from galaxiesml.standins.loopback import LoopbackServer, StandinHandler
from galaxiesml.standins.faults import FaultPlan, Faults
from galaxiesml.synthetic_catalog import hsc_csv_bytes


CATALOG_PATH = "/datasearch/api/catalog_jobs/"
SERVED_FORMATS = ("csv", "csv.gz")


@dataclass
class Job:
    id: int
    name: str
    sql: str
    out_format: str
    status: str = "waiting"
    error: str | None = None
    result: bytes | None = None
    request: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"id": self.id, "name": self.name, "status": self.status, "out_format": self.out_format}
        if self.error:
            rec["error"] = self.error
        if self.result is not None:
            rec["filesize"] = len(self.result)
        return rec


class CatalogService:
    """Jobs over one catalog table: each waits `waiting_s`, runs `running_s`, then is done."""

    def __init__(
        self,
        rows: pa.Table,
        credentials: Credentials,
        faults: Faults = Faults(),
        waiting_s: float = 0.05,
        running_s: float = 0.1,
    ):
        self.rows = rows
        self._credentials = credentials
        self.faults = FaultPlan(faults)
        self.waiting_s = waiting_s
        self.running_s = running_s
        self.jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def authorised(self, body: dict[str, Any]) -> bool:
        cred = body.get("credential") or {}
        user, password = str(cred.get("account_name", "")), str(cred.get("password", ""))
        return hmac.compare_digest(user.encode(), self._credentials.user.encode()) & hmac.compare_digest(
            password.encode(), self._credentials.password.encode()
        )

    def submit(self, body: dict[str, Any]) -> Job:
        """Start a job from a submit body; the job keeps the body, less the credential."""
        job_spec = body.get("catalog_job") or {}
        sql = str(job_spec.get("sql", ""))
        out_format = str(job_spec.get("out_format", "csv"))
        request = {k: v for k, v in body.items() if k != "credential"}
        with self._lock:
            job = Job(len(self.jobs) + 1, f"job{len(self.jobs) + 1:06d}", sql, out_format, request=request)
            self.jobs[job.id] = job
        threading.Thread(target=self._run, args=(job,), daemon=True).start()
        return job

    def _run(self, job: Job) -> None:
        time.sleep(self.waiting_s)
        if job.status != "waiting":
            return
        job.status = "running"
        time.sleep(self.running_s)
        if job.status != "running":
            return
        statement = re.sub(r"--[^\n]*|/\*.*?\*/", " ", job.sql, flags=re.S).strip().lower()
        if not statement.startswith(("select", "with")):
            job.error, job.status = "SQL error: only SELECT statements are accepted", "error"
        elif job.out_format not in SERVED_FORMATS:
            job.error, job.status = f"out_format {job.out_format!r} is not served by this stand-in", "error"
        else:
            data = hsc_csv_bytes(self.rows, job.sql)
            job.result = gzip.compress(data, 3) if job.out_format == "csv.gz" else data
            job.status = "done"


class _Handler(StandinHandler):
    server_version = "catalog-standin/1.0"

    def _json(self, status: int, payload: Any) -> None:
        self.send(status, json.dumps(payload).encode(), "application/json")

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        service = self.server.service
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        if not path.startswith(CATALOG_PATH):
            return self._json(404, {"error": "not found"})
        endpoint = path[len(CATALOG_PATH) :].strip("/")
        with service._lock:
            service.calls[endpoint] = service.calls.get(endpoint, 0) + 1
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return self._json(400, {"error": "request body is not JSON"})
        if not service.authorised(body):
            return self._json(401, {"error": "invalid account name or password"})
        kinds = ("http_502", "http_503", "slow", "drop")
        allowed = kinds + (("truncate",) if endpoint in ("download", "preview") else ())
        fault = service.faults.draw(allowed, stream=endpoint)
        if fault in ("http_502", "http_503"):
            return self._json(int(fault[-3:]), {"error": "service unavailable"})
        if fault == "drop":
            return self.drop()
        if fault == "slow":
            time.sleep(service.faults.faults.slow_seconds)
        if endpoint == "submit":
            return self._json(200, service.submit(body).record())
        job = service.jobs.get(body.get("id"))  # type: ignore[arg-type]
        if job is None:
            return self._json(404, {"error": f"no job {body.get('id')!r}"})
        if endpoint == "status":
            return self._json(200, job.record())
        if endpoint in ("cancel", "delete"):
            job.status = "error" if endpoint == "cancel" else job.status
            job.error = "cancelled" if endpoint == "cancel" else job.error
            if endpoint == "delete":
                service.jobs.pop(job.id, None)
            return self._json(200, {"id": job.id})
        if endpoint in ("download", "preview"):
            if job.status != "done" or job.result is None:
                return self._json(400, {"error": f"job {job.id} is {job.status}, not done"})
            data = job.result if endpoint == "download" else job.result[:4096]
            ctype = "application/gzip" if job.out_format == "csv.gz" else "text/csv"
            if fault == "truncate":
                self.send(200, data[: len(data) // 2], ctype, length=len(data))
                return self.drop()
            return self.send(200, data, ctype)
        return self._json(404, {"error": f"unknown endpoint {endpoint!r}"})


class CatalogServer(LoopbackServer):
    """The catalog job API stand-in (see LoopbackServer)."""

    path = CATALOG_PATH
    handler = _Handler
