"""Request latency in the emulator: `imgpipe local --latency aws` answers each request as
late as AWS would, by operation.

On loopback an S3 or DynamoDB request takes about a millisecond; from a Lambda function in
the same region a small S3 request takes tens of milliseconds and a 3 MB GET longer. Code
that waits for each answer before doing the next thing is fast locally and slow (and
billed) on AWS. With a latency table the emulator holds each answer back by its
operation's figure: a time to the first byte, plus the body's bytes (sent or received) at
the table's bytes per second.

    imgpipe local --latency aws     # imgpipe/local/latency_aws.json, each figure's source in it
    imgpipe local --latency FILE    # a table of your own, same format
    imgpipe local                   # none: the default, and the tests'

The delay is added after the request was served and before its answer is sent: a write is
applied (and visible to others) before its caller hears of it, as on AWS, and the sleep
holds nothing another request needs (the state journal's write lock is inside, released by
then). Each connection has its own server thread, so concurrent requests wait side by
side, as they would on AWS.

`GET /_imgpipe/latency` says which table is in force and what was delayed so far (per
operation: requests and seconds); `POST` with `{"profile": "aws"}` (or `"none"`, or a
file) switches tables on a running emulator: `imgpipe bench` alternates rounds with and
without latency on one stack.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from imgpipe.local.wsgi import WsgiApp, call
from pipeline.errors import ConfigError

__all__ = ["CONTROL_PATH", "Delay", "LatencyMiddleware", "LatencyTable", "NO_LATENCY",
           "PROFILES", "load_table", "operation_of", "latency_status", "set_latency"]

CONTROL_PATH = "/_imgpipe/latency"
PROFILES = {"aws": Path(__file__).resolve().parent / "latency_aws.json"}

# X-Amz-Target prefixes (JSON protocols) and SigV4 signing names, to the table's services.
_TARGETS = {"DynamoDB_20120810": "dynamodb", "AmazonSQS": "sqs",
            "AWSStepFunctions": "stepfunctions"}
_SIGNING_NAMES = {"states": "stepfunctions"}


@dataclass(frozen=True)
class Delay:
    """One operation's latency: `ms` to the first byte, then the body at `mb_per_s`."""

    ms: float
    mb_per_s: float | None = None
    source: str = ""

    def seconds(self, body_bytes: int) -> float:
        body = body_bytes / (self.mb_per_s * 1e6) if self.mb_per_s else 0.0
        return self.ms / 1000.0 + body


@dataclass(frozen=True)
class LatencyTable:
    name: str
    operations: Mapping[str, Mapping[str, Delay]] = field(default_factory=dict)

    def delay(self, service: str, operation: str) -> Delay | None:
        """The operation's delay, else its service's `*` entry, else None (no delay)."""
        ops = self.operations.get(service)
        if not ops:
            return None
        return ops.get(operation) or ops.get("*")

    def as_doc(self) -> dict[str, Any]:
        return {"profile": self.name, "operations": {
            s: {op: {"ms": d.ms, "mb_per_s": d.mb_per_s} for op, d in ops.items()}
            for s, ops in self.operations.items()}}


NO_LATENCY = LatencyTable("none")


def load_table(spec: str) -> LatencyTable:
    """`none`, a profile's name (`aws`) or a JSON file in latency_aws.json's format."""
    if spec in ("", "none"):
        return NO_LATENCY
    path = PROFILES.get(spec) or Path(spec).expanduser()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--latency {spec}: no such profile or file (profiles: none, "
                          f"{', '.join(PROFILES)}; or a JSON file like "
                          f"{PROFILES['aws']})") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--latency {spec}: {path} cannot be read as JSON ({e})") from None
    try:
        operations = {
            str(service): {str(op): Delay(ms=float(entry["ms"]),
                                          mb_per_s=float(entry["mb_per_s"])
                                          if entry.get("mb_per_s") else None,
                                          source=str(entry.get("source", "")))
                           for op, entry in ops.items()}
            for service, ops in doc["operations"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"--latency {spec}: {path} is not a latency table ({e!r}); each "
                          "operation needs \"ms\" and may have \"mb_per_s\", under "
                          "\"operations\" by service (see latency_aws.json)") from None
    for service, ops in operations.items():
        for op, d in ops.items():
            if d.ms < 0 or (d.mb_per_s is not None and d.mb_per_s <= 0):
                raise ConfigError(f"--latency {spec}: {service} {op}: ms must be >= 0 and "
                                  "mb_per_s > 0")
    return LatencyTable(str(doc.get("profile") or path.stem), operations)


# ---- which operation a request is ------------------------------------------------------


def operation_of(environ: Mapping[str, Any], dispatcher: Any = None) -> tuple[str, str]:
    """(service, operation) of a request, in the table's names: by its X-Amz-Target (the
    JSON protocols), else by its signature's service and, for S3, its method and path."""
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target:
        prefix, _, operation = target.partition(".")
        return _TARGETS.get(prefix, prefix.lower()), operation
    service = _signing_service(environ)
    if service is None:  # unsigned: a browser's form upload, or moto's own API
        if dispatcher is not None:
            from imgpipe.local.state import service_of

            service = service_of(dispatcher, dict(environ))
        else:
            service = "s3"
    if service == "s3":
        return "s3", s3_operation(environ)
    action = parse_qs(str(environ.get("QUERY_STRING", ""))).get("Action")
    return service, action[0] if action else "*"


def _signing_service(environ: Mapping[str, Any]) -> str | None:
    credential = ""
    authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
    if "Credential=" in authorization:
        credential = authorization.split("Credential=", 1)[1].split(",", 1)[0]
    else:
        found = parse_qs(str(environ.get("QUERY_STRING", ""))).get("X-Amz-Credential")
        credential = found[0] if found else ""
    parts = credential.strip().split("/")  # KEY/DATE/REGION/SERVICE/aws4_request
    if len(parts) < 5:
        return None
    return _SIGNING_NAMES.get(parts[3], parts[3])


def s3_operation(environ: Mapping[str, Any]) -> str:
    method = str(environ.get("REQUEST_METHOD", "GET"))
    query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
    key = _s3_key(environ)
    if key:
        upload = "uploadId" in query
        if method == "GET":
            return "ListParts" if upload else "GetObject"
        if method == "HEAD":
            return "HeadObject"
        if method == "PUT":
            if upload:
                return "UploadPart"
            return "CopyObject" if environ.get("HTTP_X_AMZ_COPY_SOURCE") else "PutObject"
        if method == "DELETE":
            return "AbortMultipartUpload" if upload else "DeleteObject"
        if method == "POST":
            return ("CreateMultipartUpload" if "uploads" in query else
                    "CompleteMultipartUpload" if upload else "*")
        return "*"
    listing = set(query) <= {"list-type", "prefix", "delimiter", "continuation-token",
                             "start-after", "max-keys", "encoding-type", "marker",
                             "fetch-owner"}
    if method == "GET" and listing:
        return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
    if method == "HEAD":
        return "HeadBucket"
    if method == "POST":
        return "DeleteObjects" if "delete" in query else "PostObject"
    return "*"


def _s3_key(environ: Mapping[str, Any]) -> str:
    """The object key of an S3 request, path-style (the emulator's) or virtual-hosted."""
    host = str(environ.get("HTTP_HOST", "")).rsplit(":", 1)[0].lower()
    path = unquote(str(environ.get("PATH_INFO", ""))).lstrip("/")
    labels = host.split(".")
    virtual = (len(labels) > 1 and not host.replace(".", "").isdigit()
               and not labels[0].startswith("s3"))
    if virtual:
        return path
    return path.partition("/")[2]


# ---- the middleware --------------------------------------------------------------------


class LatencyMiddleware:
    """WSGI middleware: serves the request, then holds its answer back by the table's
    delay for the operation (first byte + request and response bodies at the table's
    rate). With the `none` table it passes every request straight through."""

    def __init__(self, app: WsgiApp, table: LatencyTable = NO_LATENCY, *,
                 dispatcher: Any = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.app = app
        self.table = table
        self.dispatcher = dispatcher
        self.sleep = sleep
        self._lock = threading.Lock()  # the counters only; never held while sleeping
        self.delayed: dict[str, list[float]] = {}  # "service Operation" -> [requests, s]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == CONTROL_PATH:
            return self._control(environ, start_response)
        table = self.table
        if not table.operations:
            return self.app(environ, start_response)
        service, operation = operation_of(environ, self.dispatcher)
        delay = table.delay(service, operation)
        if delay is None:
            return self.app(environ, start_response)
        sent = int(environ.get("CONTENT_LENGTH") or 0)
        status, headers, body = call(self.app, environ)
        seconds = delay.seconds(sent + len(body))
        self.sleep(seconds)
        with self._lock:
            count = self.delayed.setdefault(f"{service} {operation}", [0, 0.0])
            count[0] += 1
            count[1] += seconds
        start_response(status, headers)
        return [body]

    def status(self) -> dict[str, Any]:
        with self._lock:
            delayed = {k: {"requests": int(n), "seconds": round(s, 4)}
                       for k, (n, s) in sorted(self.delayed.items())}
        return {**self.table.as_doc(), "delayed": delayed}

    def _control(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        code = "200 OK"
        if environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                request = json.loads(environ["wsgi.input"].read(length) or b"{}")
                self.table = load_table(str(request.get("profile", "none")))
                with self._lock:
                    self.delayed = {}
                doc = self.status()
            except (ValueError, AttributeError, ConfigError) as e:
                code, doc = "400 Bad Request", {"error": str(e)}
        else:
            doc = self.status()
        body = json.dumps(doc).encode()
        start_response(code, [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
        return [body]


# ---- the stack's side ------------------------------------------------------------------


def latency_status(endpoint_url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """What `GET /_imgpipe/latency` says: the table in force and what was delayed."""
    with urllib.request.urlopen(endpoint_url + CONTROL_PATH, timeout=timeout_s) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def set_latency(endpoint_url: str, profile: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Switch a running emulator's table (`none`, `aws` or a file); its counters restart."""
    request = urllib.request.Request(endpoint_url + CONTROL_PATH, method="POST",
                                     data=json.dumps({"profile": profile}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc
