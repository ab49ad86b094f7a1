"""The local stand-in for a Lambda function URL: HTTP on 127.0.0.1 in, payload format 2.0
events to the function (run by the stack's Runtime API workers), the function's response
back out as HTTP.

What it does as the function URL does:

- the event: `version` 2.0, `rawPath`, `rawQueryString`, lower-case `headers` (repeated
  ones joined by commas), `queryStringParameters`, `requestContext.http`, and the body,
  base64-encoded (`isBase64Encoded`) unless its content type is text;
- a request whose event would exceed Lambda's 6 MB invoke payload gets 413 without
  invoking; a function error gets 502 `Internal Server Error`;
- the response: `statusCode`, `headers`, `body` (`isBase64Encoded` decoded); a result
  without `statusCode` is sent as a 200 JSON body;
- HTTP/1.1 framing (RFC 9112): a body is read by Content-Length or, chunked, chunk by
  chunk; a request that frames its body ambiguously or wrongly (both headers, another
  transfer coding, a length that is not one whole number, bad chunks) gets a 400 (501 for
  a coding it does not know) and its connection is closed, so nothing in a body is ever
  read as a request; HEAD reaches the function and its answer is sent without the body;
  a connection idle for `idle_timeout_s` is closed; the listen backlog is the emulator's;
- CORS from the URL's configuration (read back from the emulator, as the template set
  it): preflight `OPTIONS` is answered here, and matching origins get
  Access-Control-Allow-Origin.

What it does not: AuthType AWS_IAM is not checked (requests are not SigV4-verified
locally); the stack's banner says so.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from imgpipe.local.serving import BackgroundServer

__all__ = ["FrontDoor", "FramingError", "IDLE_TIMEOUT_S", "MAX_EVENT_BYTES", "read_body",
           "url_event"]

log = logging.getLogger("imgpipe.local")
# Lambda's limit for a synchronous invocation's payload, which the event must fit in.
MAX_EVENT_BYTES = 6 * 1024 * 1024
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
               "application/x-www-form-urlencoded")
# A connection that sends nothing for this long is closed.
IDLE_TIMEOUT_S = 60.0
# A body longer than the limit is read and dropped up to this much, so that a client still
# sending sees the 413 rather than a broken pipe; past it the connection is closed.
_DRAIN_BYTES = 64 * 1024 * 1024
_CHUNK_LINE_BYTES = 4096
# (HTTP status, payload, X-Amz-Function-Error) of one synchronous invocation.
Invoke = Callable[[bytes], tuple[int, bytes, str | None]]


def url_event(method: str, target: str, headers: Mapping[str, str], body: bytes,
              source_ip: str, domain: str) -> dict[str, Any]:
    """The payload 2.0 event a function URL sends for one request."""
    split = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": split.path or "/",
        "rawQueryString": split.query,
        "headers": lowered,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": domain.split(".")[0],
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {"method": method, "path": split.path or "/", "protocol": "HTTP/1.1",
                     "sourceIp": source_ip, "userAgent": lowered.get("user-agent", "")},
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = {k: ",".join(v) for k, v in query.items()}
    if body:
        ctype = lowered.get("content-type", "").lower()
        if ctype.startswith(_TEXT_TYPES):
            event["body"] = body.decode("utf-8", errors="replace")
        else:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


class FrontDoor:
    """One function URL on 127.0.0.1:`port` (0: any free port)."""

    def __init__(self, invoke: Invoke, *, cors: Mapping[str, Any] | None = None,
                 host: str = "127.0.0.1", port: int = 0,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.invoke = invoke
        self.cors = dict(cors or {})
        self.host, self.port = host, port
        self.idle_timeout_s = idle_timeout_s
        self._http: BackgroundServer | None = None

    @property
    def url(self) -> str:
        assert self._http is not None, "start() first"
        return self._http.url

    def start(self) -> str:
        handler = type("Request", (_Request,), {"door": self, "timeout": self.idle_timeout_s})
        self._http = BackgroundServer(handler, self.host, self.port, "imgpipe-function-url")
        return self.url

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # ---- CORS, as the URL's configuration says ----------------------------------------

    def allowed_origin(self, origin: str | None) -> str | None:
        allowed = [str(o) for o in self.cors.get("AllowOrigins") or ()]
        if not origin or not allowed:
            return None
        return "*" if "*" in allowed else (origin if origin in allowed else None)

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        allowed = self.allowed_origin(origin)
        return {"Access-Control-Allow-Origin": allowed, "Vary": "Origin"} if allowed else {}

    def preflight_headers(self, origin: str | None) -> dict[str, str]:
        headers = self.cors_headers(origin)
        if headers:
            headers["Access-Control-Allow-Methods"] = ",".join(
                self.cors.get("AllowMethods") or ("GET", "POST"))
            headers["Access-Control-Allow-Headers"] = ",".join(
                self.cors.get("AllowHeaders") or ())
            if self.cors.get("MaxAge"):
                headers["Access-Control-Max-Age"] = str(self.cors["MaxAge"])
        return headers


def http_response(result: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a function's result, as a function URL reads it."""
    try:
        decoded = json.loads(result) if result else None
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict) or "statusCode" not in decoded:
        return 200, {"Content-Type": "application/json"}, result
    headers = {str(k): str(v) for k, v in (decoded.get("headers") or {}).items()}
    body = decoded.get("body") or ""
    if decoded.get("isBase64Encoded"):
        out = base64.b64decode(body)
    else:
        out = body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode()
    return int(decoded["statusCode"]), headers, out


class _Reader(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...

    def readline(self, size: int = ..., /) -> bytes: ...


class FramingError(Exception):
    """A request whose body cannot be read as HTTP/1.1 frames it: `status` and a sentence.
    The connection is closed after the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _too_large() -> str:
    return f"Request must be smaller than {MAX_EVENT_BYTES} bytes for the InvokeFunction operation"


def read_body(headers: Any, rfile: _Reader, limit: int) -> bytes:
    """The request body as RFC 9112 frames it (section 6): a chunked body is read chunk by
    chunk; otherwise Content-Length bytes (none without one). Refused with `FramingError`:
    both headers at once (the classic request-smuggling shape), a transfer coding other than
    chunked alone, a length that is not one decimal number, bad chunk framing, and a body
    over `limit` (413, drained when it is not too large to bother)."""
    codings = [c.strip().lower() for v in headers.get_all("Transfer-Encoding") or ()
               for c in v.split(",") if c.strip()]
    lengths = [v.strip() for v in headers.get_all("Content-Length") or ()]
    if codings and lengths:
        raise FramingError(400, "a request may not carry both Transfer-Encoding and "
                                "Content-Length")
    if codings:
        if codings != ["chunked"]:
            status = 400 if codings[-1] != "chunked" else 501
            raise FramingError(status, f"Transfer-Encoding {', '.join(codings)} is not "
                                       "supported: send the body with Content-Length or "
                                       "Transfer-Encoding: chunked")
        return _read_chunked(rfile, limit)
    if not lengths:
        return b""
    if len(set(lengths)) > 1 or not all(v.isascii() and v.isdigit() for v in lengths):
        shown = ", ".join(repr(v[:20]) for v in lengths)
        raise FramingError(400, f"Content-Length must be one whole number of bytes, not "
                                f"{shown}")
    length = int(lengths[0]) if len(lengths[0]) <= 20 else _DRAIN_BYTES + 1
    if length > limit:
        if length <= _DRAIN_BYTES:
            remaining = length
            while remaining > 0:
                got = rfile.read(min(1 << 16, remaining))
                if not got:
                    break
                remaining -= len(got)
        raise FramingError(413, _too_large())
    body = rfile.read(length)
    if len(body) != length:
        raise FramingError(400, f"the body ended after {len(body)} of the {length} bytes "
                                "Content-Length announced")
    return body


def _read_chunked(rfile: _Reader, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(_CHUNK_LINE_BYTES + 1)
        if not line.endswith(b"\n") or len(line) > _CHUNK_LINE_BYTES:
            raise FramingError(400, "a chunk size line is missing, cut short or too long")
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or any(
                c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise FramingError(400, f"a chunk size must be a hexadecimal number, not "
                                    f"{size_text[:20].decode('latin-1')!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > limit:
            raise FramingError(413, _too_large())
        data = rfile.read(size)
        if len(data) != size or rfile.read(2) != b"\r\n":
            raise FramingError(400, "a chunk is shorter than its size or not followed by CRLF")
        parts.append(data)
    # The trailer section: header lines, then an empty line.
    for _ in range(100):
        line = rfile.readline(_CHUNK_LINE_BYTES + 1)
        if line in (b"\r\n", b"\n"):
            return b"".join(parts)
        if not line.endswith(b"\n"):
            break
    raise FramingError(400, "the chunked body does not end with an empty line")


class _Request(BaseHTTPRequestHandler):
    """One connection to a function URL: each request becomes the function's event, and
    its answer the HTTP response (`FrontDoor.start` binds `door` and `timeout`)."""

    door: FrontDoor
    protocol_version = "HTTP/1.1"
    # An idle keep-alive connection (or a client that stops mid-request) is closed
    # after this long: socketserver applies it to every read of the socket.
    timeout = IDLE_TIMEOUT_S

    def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Access-Control-Request-Method"):
            self._send(200, {**self.door.preflight_headers(self.headers.get("Origin"))},
                       b"")
        else:
            self._forward()

    def do_GET(self) -> None:  # noqa: N802
        self._forward()

    def do_HEAD(self) -> None:  # noqa: N802 - the function answers; no body is sent
        self._forward()

    def do_POST(self) -> None:  # noqa: N802
        self._forward()

    def do_PUT(self) -> None:  # noqa: N802
        self._forward()

    def do_PATCH(self) -> None:  # noqa: N802
        self._forward()

    def do_DELETE(self) -> None:  # noqa: N802
        self._forward()

    def _forward(self) -> None:
        origin = self.headers.get("Origin")
        try:
            body = read_body(self.headers, self.rfile, MAX_EVENT_BYTES)
        except FramingError as e:
            # The connection cannot be trusted to be at a request boundary any more
            # (or the rest of the body is not worth reading): answer and close it.
            self.close_connection = True
            self._send(e.status, {**self.door.cors_headers(origin), "Connection": "close"},
                       json.dumps({"Message": str(e)}).encode())
            return
        event = url_event(self.command, self.path, dict(self.headers.items()), body,
                          self.client_address[0],
                          self.headers.get("Host") or self.door.url[7:])
        payload = json.dumps(event).encode()
        if len(payload) > MAX_EVENT_BYTES:
            self._send(413, self.door.cors_headers(origin), json.dumps({
                "Message": _too_large()}).encode())
            return
        status, result, error = self.door.invoke(payload)
        if status != 200 or error:
            log.error("function URL: the function failed: %s",
                      result.decode(errors="replace")[:500])
            self._send(502, self.door.cors_headers(origin),
                       b'{"Message":"Internal Server Error"}')
            return
        code, headers, out = http_response(result)
        self._send(code, {**headers, **self.door.cors_headers(origin)}, out)

    def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        sent = {k.lower() for k in headers}
        for name, value in headers.items():
            self.send_header(name, value)
        if "content-type" not in sent and body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, headers too long, an
        unknown method) as JSON, like the function URL's, not an HTML page."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        self._send(code, {"Connection": "close"},
                   json.dumps({"Message": text}).encode())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the function logs for itself
