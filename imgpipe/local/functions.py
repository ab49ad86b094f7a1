"""The function host of the embedded stack: the Lambda Invoke API's answer, for invocations
forwarded by the emulator process (`aws lambda invoke`, Step Functions' tasks) and for
the ingest poller in this process.

It answers `POST /2015-03-31/functions/NAME/invocations` on 127.0.0.1 the way Lambda does:
RequestResponse gives the function's JSON, or status 200 with `X-Amz-Function-Error:
Unhandled` and Lambda's error JSON; `X-Amz-Invocation-Type: Event` gives 202 at once and
runs the invocation in the background (a failure is retried twice, as Lambda does);
`DryRun` gives 204. A function it does not host
gets 404.

The template's functions run in worker processes through the Runtime API
(`imgpipe.local.runtime.FunctionPool`); functions that exist only locally (the stand-in
for the Distributed Map's ItemReader + ItemBatcher) run in this process.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from imgpipe.local.runtime import FunctionPool, PoolStopped, lambda_error
from imgpipe.local.serving import BackgroundServer

__all__ = ["FunctionHost", "FunctionFailed", "invoke_url"]

Handler = Callable[[dict[str, Any]], Any]
log = logging.getLogger("imgpipe.local")
# Lambda retries an asynchronous invocation that failed twice, after ~1 and ~2 minutes.
ASYNC_RETRY_DELAYS_S: tuple[float, ...] = (60.0, 120.0)
# The Lambda Invoke API's path: the emulator forwards to it, the host answers it.
_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")


def invoke_url(functions_url: str, name: str) -> str:
    quoted = urllib.parse.quote(name, safe="")
    return f"{functions_url.rstrip('/')}/2015-03-31/functions/{quoted}/invocations"


class FunctionFailed(Exception):
    """An invocation that ended with a function error (as `X-Amz-Function-Error` says)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}" if error_type else message)
        self.error_type = error_type


class FunctionHost:
    def __init__(self) -> None:
        self._pools: dict[str, FunctionPool] = {}
        self._local: dict[str, Handler] = {}
        self._http: BackgroundServer | None = None
        self._background: set[threading.Thread] = set()
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        assert self._http is not None, "start() first"
        return self._http.url

    @property
    def pools(self) -> dict[str, FunctionPool]:
        return dict(self._pools)

    def register_pool(self, pool: FunctionPool) -> None:
        """A function of the template, run by Runtime API workers."""
        self._pools[pool.spec.name] = pool

    def register_local(self, name: str, handler: Handler) -> None:
        """A function that exists only in the local stack, run in this process."""
        self._local[name] = handler

    def invoke(self, name: str, body: bytes) -> tuple[int, bytes, str | None]:
        """(HTTP status, payload, X-Amz-Function-Error or None) for one synchronous
        invocation."""
        if name in self._pools:
            try:
                result = self._pools[name].invoke(body or b"{}")
            except PoolStopped as e:  # as Lambda answers its own faults: a 5xx
                return 503, json.dumps({"Type": "Service", "Message": str(e)}).encode(), None
            return 200, result.payload, result.function_error
        if name in self._local:
            try:
                return 200, json.dumps(self._local[name](json.loads(body or b"{}"))).encode(), \
                    None
            except Exception as e:  # noqa: BLE001 - reported as Lambda does
                return 200, lambda_error(type(e).__name__, str(e)), "Unhandled"
        return 404, json.dumps({"Message": f"Function not found: {name}"}).encode(), None

    def call(self, name: str, event: Any) -> Any:
        """Invoke and return the decoded result; a function error raises FunctionFailed."""
        status, payload, error = self.invoke(name, json.dumps(event).encode())
        if status != 200:
            kind = "ResourceNotFoundException" if status == 404 else "ServiceException"
            raise FunctionFailed(kind, payload.decode())
        decoded = json.loads(payload) if payload else None
        if error:
            details = decoded if isinstance(decoded, dict) else {}
            raise FunctionFailed(str(details.get("errorType") or ""),
                                 str(details.get("errorMessage") or payload.decode()))
        return decoded

    def invoke_async(self, name: str, body: bytes) -> tuple[int, bytes, str | None]:
        """`--invocation-type Event`: accepted now, run in the background; a function
        error is retried twice, after 1 and then 2 minutes, as Lambda does."""
        if name not in self._pools and name not in self._local:
            return self.invoke(name, body)

        def run() -> None:
            for attempt, delay_s in enumerate(ASYNC_RETRY_DELAYS_S + (None,)):
                status, payload, error = self.invoke(name, body)
                if status != 200 or not error:  # done, or the stack is stopping
                    break
                log.error("%s: asynchronous invocation failed (attempt %d of %d): %s", name,
                          attempt + 1, len(ASYNC_RETRY_DELAYS_S) + 1,
                          payload.decode(errors="replace"))
                if delay_s is None or self._stopping.wait(delay_s):
                    break
            self._background.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"event-{name}", daemon=True)
        self._background.add(thread)
        thread.start()
        return 202, b"", None

    def start(self) -> str:
        host = self

        class Request(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                match = _PATH.match(urllib.parse.urlsplit(self.path).path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = self.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
                if match is None:
                    status, payload, error = 404, b'{"Message": "unknown path"}', None
                elif kind == "Event":
                    status, payload, error = host.invoke_async(
                        urllib.parse.unquote(match[1]), body)
                elif kind == "DryRun":
                    status, payload, error = 204, b"", None
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
                pass  # the functions log for themselves

        self._http = BackgroundServer(Request, "127.0.0.1", 0, "imgpipe-functions")
        return self.url

    def stop(self) -> None:
        self._stopping.set()
        if self._http is not None:
            self._http.close()
            self._http = None
        for pool in self._pools.values():
            pool.stop()

