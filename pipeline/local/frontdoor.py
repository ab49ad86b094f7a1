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
from typing import Any

from pipeline.local.serving import BackgroundServer

__all__ = ["FrontDoor", "MAX_EVENT_BYTES", "url_event"]

log = logging.getLogger("imgpipe.local")
# Lambda's limit for a synchronous invocation's payload, which the event must fit in.
MAX_EVENT_BYTES = 6 * 1024 * 1024
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
               "application/x-www-form-urlencoded")
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
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.invoke = invoke
        self.cors = dict(cors or {})
        self.host, self.port = host, port
        self._http: BackgroundServer | None = None

    @property
    def url(self) -> str:
        assert self._http is not None, "start() first"
        return self._http.url

    def start(self) -> str:
        door = self

        class Request(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's name
                if self.headers.get("Access-Control-Request-Method"):
                    self._send(200, {**door.preflight_headers(self.headers.get("Origin"))},
                               b"")
                else:
                    self._forward()

            def do_GET(self) -> None:  # noqa: N802
                self._forward()

            def do_POST(self) -> None:  # noqa: N802
                self._forward()

            def do_PUT(self) -> None:  # noqa: N802
                self._forward()

            def do_DELETE(self) -> None:  # noqa: N802
                self._forward()

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                origin = self.headers.get("Origin")
                if length > MAX_EVENT_BYTES:
                    # Read (and drop) the body first: a client still sending would see a
                    # broken pipe instead of the answer.
                    for start in range(0, length, 1 << 16):
                        self.rfile.read(min(1 << 16, length - start))
                    self._send(413, door.cors_headers(origin), json.dumps({
                        "Message": f"Request must be smaller than {MAX_EVENT_BYTES} bytes "
                                   f"for the InvokeFunction operation"}).encode())
                    return
                body = self.rfile.read(length)
                event = url_event(self.command, self.path, dict(self.headers.items()), body,
                                  self.client_address[0],
                                  self.headers.get("Host") or door.url[7:])
                payload = json.dumps(event).encode()
                if len(payload) > MAX_EVENT_BYTES:
                    self._send(413, door.cors_headers(origin), json.dumps({
                        "Message": f"Request must be smaller than {MAX_EVENT_BYTES} bytes "
                                   f"for the InvokeFunction operation"}).encode())
                    return
                status, result, error = door.invoke(payload)
                if status != 200 or error:
                    log.error("function URL: the function failed: %s",
                              result.decode(errors="replace")[:500])
                    self._send(502, door.cors_headers(origin),
                               b'{"Message":"Internal Server Error"}')
                    return
                code, headers, out = http_response(result)
                self._send(code, {**headers, **door.cors_headers(origin)}, out)

            def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
                self.send_response(status)
                sent = {k.lower() for k in headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                if "content-type" not in sent and body:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the function logs for itself

        self._http = BackgroundServer(Request, self.host, self.port, "imgpipe-function-url")
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
