"""The function host of the embedded stack: runs Lambda invocations forwarded by the
emulator process, in this process, with the real handlers.

It answers the Lambda Invoke API's path (`POST /2015-03-31/functions/NAME/invocations`)
on 127.0.0.1 the way Lambda reports results: the handler's JSON on success; on an exception,
status 200 with `X-Amz-Function-Error: Unhandled` and `{"errorType", "errorMessage"}`.
A function it does not host gets 404.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipeline.local.poller import LambdaContext

__all__ = ["FunctionHost", "invoke_url"]

Handler = Callable[[dict[str, Any], Any], Any]
# The Lambda Invoke API's path: the emulator forwards to it, the host answers it.
_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")


def invoke_url(functions_url: str, name: str) -> str:
    quoted = urllib.parse.quote(name, safe="")
    return f"{functions_url.rstrip('/')}/2015-03-31/functions/{quoted}/invocations"


class FunctionHost:
    def __init__(self, region: str = "us-east-1") -> None:
        self.region = region
        self._functions: dict[str, tuple[Handler, float]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def register(self, name: str, handler: Handler, timeout_s: float) -> None:
        self._functions[name] = (handler, timeout_s)

    def invoke(self, name: str, body: bytes) -> tuple[int, bytes, str | None]:
        """(HTTP status, payload, X-Amz-Function-Error or None) for one invocation."""
        if name not in self._functions:
            return 404, json.dumps({"Message": f"Function not found: {name}"}).encode(), None
        handler, timeout_s = self._functions[name]
        try:
            event = json.loads(body or b"{}")
            result = handler(event, LambdaContext(name, timeout_s, region=self.region))
            return 200, json.dumps(result).encode(), None
        except Exception as e:  # noqa: BLE001 - reported as Lambda does
            error = {"errorType": type(e).__name__, "errorMessage": str(e)}
            return 200, json.dumps(error).encode(), "Unhandled"

    def start(self) -> str:
        host = self

        class Request(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                match = _PATH.match(urllib.parse.urlsplit(self.path).path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if match is None:
                    status, payload, error = 404, b'{"Message": "unknown path"}', None
                else:
                    status, payload, error = host.invoke(urllib.parse.unquote(match[1]), body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if error:
                    self.send_header("X-Amz-Function-Error", error)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the handlers log for themselves

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Request)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="imgpipe-functions", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
