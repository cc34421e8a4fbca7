"""An HTTP stand-in served from a background thread, on loopback by default."""
from __future__ import annotations

import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("galaxiesml.standins")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], service: Any):
        super().__init__(address, handler)
        self.service = service

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that closes its connection (a keep-alive one it no longer needs, a reply it read
        no further) is no error of the service's: socketserver would print a traceback for it."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class LoopbackServer:
    """Serves `service` through `handler` on host:port (port 0 picks a free one) at `path`.
    Use as a context manager, or call start() and stop(). Handlers reach it as self.server.service."""

    path = ""
    handler: type[BaseHTTPRequestHandler]

    def __init__(self, service: Any, host: str = "127.0.0.1", port: int = 0):
        self.service = service
        self._httpd = _Server((host, port), self.handler, service)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name=type(self).__name__, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The service's endpoint, to give its client."""
        return self.base_url + self.path

    def start(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StandinHandler(BaseHTTPRequestHandler):
    """What the stand-ins' request handlers share: HTTP/1.1, quiet logs, a reply, a dropped
    connection. `self.server.service` is the stand-in behind it."""

    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class name
        log.debug("%s %s", self.address_string(), format % args)

    def on_reply(self, status: int) -> None:
        """Called with each reply's status (a stand-in may count them)."""

    def send(
        self,
        status: int,
        body: bytes = b"",
        ctype: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        """Reply with `body`; `length` may announce more than is sent (a reply cut short)."""
        self.on_reply(status)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def drop(self) -> None:
        """Close the connection without (the rest of) a reply."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
