"""The Lambda Runtime API for one local worker process (the Runtime Interface Emulator's
role, without Docker): `GET /2018-06-01/runtime/invocation/next` hands the worker its
invocation with Lambda's headers (request id, deadline, function ARN); the worker answers
on `.../response` or `.../error`, or reports a failed init on `/runtime/init/error`. A
response over Lambda's 6 MB limit fails the invocation as Lambda does. The process side
(starting, watching, killing workers) is `imgpipe.local.runtime`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["MAX_RESPONSE_BYTES", "RuntimeApi", "Invocation", "lambda_error"]

# Lambda's limit for a synchronous response.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024
_RUNTIME = "/2018-06-01/runtime"


def lambda_error(error_type: str, message: str) -> bytes:
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()


@dataclass
class Invocation:
    request_id: str
    payload: bytes
    function_arn: str
    timeout_s: float
    taken_at: float | None = None  # monotonic, when the runtime received it
    result: bytes | None = None
    error: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, body: bytes, error: bool) -> bool:
        if self.done.is_set():
            return False
        self.result, self.error = body, error
        self.done.set()
        return True


class RuntimeApi:
    """The Runtime API for one worker process, on 127.0.0.1 and a port of its own."""

    def __init__(self) -> None:
        self.pending: queue.Queue[Invocation] = queue.Queue(maxsize=1)
        self.current: Invocation | None = None
        self.ready = threading.Event()  # the runtime asked for its first invocation
        self.init_error: bytes | None = None
        self.closed = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the runtime client keeps its connection
            # Headers and body are two writes: with Nagle's algorithm the body waits for the
            # client's delayed ACK (~40 ms an invocation).
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path != f"{_RUNTIME}/invocation/next":
                    return self._answer(404, b'{"errorType": "NotFound"}')
                api.ready.set()
                invocation = api.next_invocation()
                if invocation is None:  # stopping: the process is killed, nobody listens
                    self.close_connection = True
                    return None
                deadline_ms = int((time.time() + invocation.timeout_s) * 1000)
                self._answer(200, invocation.payload, {
                    "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
                })

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = api.posted(self.path, body)
                self._answer(status, answer)

            def _answer(self, status: int, body: bytes,
                        headers: Mapping[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        name="imgpipe-runtime-api", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def next_invocation(self) -> Invocation | None:
        while not self.closed.is_set():
            try:
                invocation = self.pending.get(timeout=0.5)
            except queue.Empty:
                continue
            invocation.taken_at = time.monotonic()
            self.current = invocation
            return invocation
        return None

    def posted(self, path: str, body: bytes) -> tuple[int, bytes]:
        if path == f"{_RUNTIME}/init/error":
            self.init_error = body or lambda_error("Runtime.Unknown", "init failed")
            return 202, b'{"status": "OK"}'
        prefix = f"{_RUNTIME}/invocation/"
        request_id, _, outcome = path[len(prefix):].partition("/")
        current = self.current
        if not path.startswith(prefix) or outcome not in ("response", "error"):
            return 404, b'{"errorType": "NotFound"}'
        if current is None or current.request_id != request_id:
            return 400, lambda_error("InvalidRequestID", f"no invocation {request_id} here")
        if outcome == "response" and len(body) > MAX_RESPONSE_BYTES:
            current.finish(lambda_error(
                "Function.ResponseSizeTooLarge",
                f"Response payload size exceeded maximum allowed payload size "
                f"({MAX_RESPONSE_BYTES} bytes)."), error=True)
            return 413, lambda_error("RequestEntityTooLarge", "response too large")
        if not current.finish(body, error=outcome == "error"):
            return 403, lambda_error("InvalidStateTransition", "already answered")
        return 202, b'{"status": "OK"}'

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()
