"""An HTTP server of the local stack on a daemon thread: the function host and the function
URL's front door each answer on one."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["LISTEN_BACKLOG", "BackgroundServer"]


# The listen backlog: the emulator's (werkzeug's LISTEN_QUEUE), not socketserver's 5, which
# resets connections as soon as a few dozen callers arrive at once.
LISTEN_BACKLOG = 128


class _Server(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG


class BackgroundServer:
    """`handler` served on `host`:`port` (0: a free port) until `close()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str, port: int,
                 name: str) -> None:
        self._server = _Server((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=name,
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
