"""The emulator process of the embedded stack: moto's server plus the three adjustments
`imgpipe local` needs.

    python -m imgpipe.local.emulator --port 4566 --functions http://127.0.0.1:PORT \
        --parent-pid PID

It runs in a process of its own, not in a thread of the pipeline's. The emulator's request
handling is pure Python; in the pipeline's process it competed with the handlers' botocore
calls for one GIL, and the backfill of 12 MP photos ran at about 60 % of the core's rate.
In its own process, the two sides use both CPUs.

The adjustments, each applied to this process's moto only:

- Lambda: moto runs function code only in Docker. Every `Invoke` (the Step Functions
  engine's and `aws lambda invoke`'s) is forwarded to the parent's function host
  (`--functions`, the Lambda Invoke API's path, invocation type and error header), which
  runs the function in its Runtime API workers.
- Executions started without a name get a fresh UUID, as on AWS (moto 5.2 names them all
  "None", so a second unnamed backfill fails with ExecutionAlreadyExists).
- S3 form uploads (POST object, the upload page's presigned POSTs) answer with the
  bucket's CORS headers, as S3 does; moto leaves them out on that one request.
- A form upload not signed with Signature Version 4 is refused as S3 refuses it for every
  bucket created since June 2020 (`sigv2_post_refusal`), and so is an S3 request signed
  with SigV2 in its Authorization header or query string (`refuse_sigv2_requests`); moto
  checks no signature, so a SigV2 form or URL that AWS would refuse used to work here.
- S3 events sent to EventBridge get increasing sequencers (moto gives them all the same
  one, so an overwrite would look already processed), and a multipart upload is announced
  once, not twice (`imgpipe.local.s3_events`).
- moto checks each received message's retention period by computing all of the queue's
  attributes, approximate counts included, each a walk over every message: a receive on a
  queue of N messages took N² steps, a fifth of the emulator's CPU during an upload of 128
  photos. The check reads the one attribute it needs (`_cheap_retention_check`).
- moto routes each request by listing its own package directory (a listdir and ~150 stat
  calls per request); the directory does not change, so it is listed once.
- The Step Functions engine logs a failed state as one line of several thousand characters
  (its parse tree); it is cut to one short line (`shorten_engine_logs`): the failure's
  cause is what describe-execution and `imgpipe backfill` report.
- SQS message move tasks (the DLQ redrive API), which moto does not have, are answered by
  `imgpipe.local.message_moves`.
- For fault-injection runs only (`tools/chaos.py` sets IMGPIPE_CHAOS_*), DynamoDB
  PutItem replies are lost after the write (`imgpipe.local.chaos`).
- The Distributed Map behaves as AWS documents it where moto's does not: children's
  failures and the tolerated failure percentage, EXPRESS children stopped at 5 minutes,
  the ResultWriter's files, map runs of a starting execution, `list-executions
  --map-run-arn` (`imgpipe.local.distributed_map`).
- With `--state-dir DIR`, writes are journaled and replayed on request
  (`imgpipe.local.state`), so the stack's data survives a restart.
- With `--latency aws` (or a table of one's own), each answer is held back as long as
  AWS's would take, by operation (`imgpipe.local.latency`); none by default.

The process ignores Ctrl-C (the terminal's SIGINT reaches the whole process group; the
parent decides when to stop), exits on SIGTERM, and exits by itself when its parent dies.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from imgpipe.local import distributed_map, message_moves
from imgpipe.local.functions import invoke_url
from imgpipe.local.s3_events import (
    one_event_per_multipart_upload,
    stamp_eventbridge_sequencers,
)

__all__ = ["main", "KeepAliveHandler", "EngineLogFormatter", "shorten_engine_logs",
           "refuse_sigv2_requests", "sigv2_post_refusal", "within_retention"]

ENGINE_LOGGER = "moto.stepfunctions"
ENGINE_LINE_LIMIT = 200

# A forwarded invocation that cannot reach the function host is reported as Lambda reports
# its own service faults, so the state machine's Retry on Lambda.ServiceException applies.
SERVICE_ERROR = "Lambda.ServiceException"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imgpipe.local.emulator",
                                description="moto's server for `imgpipe local` (started by it)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--functions", required=True, metavar="URL",
                   help="the function host that runs Lambda invocations")
    p.add_argument("--parent-pid", type=int, default=0,
                   help="exit when this process (the stack) is gone (default: the parent)")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="journal writes to DIR and replay them on request (see "
                   "imgpipe.local.state)")
    p.add_argument("--latency", default="none", metavar="PROFILE",
                   help="hold each answer back by AWS-like latency: none (default), aws, or "
                   "a JSON table (see imgpipe.local.latency)")
    args = p.parse_args(argv)

    # The Step Functions engine calls the other services back through this port.
    os.environ["MOTO_PORT"] = str(args.port)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _exit_with_parent(args.parent_pid or os.getppid())
    # The per-request access log would drown the stack's one line per batch.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    shorten_engine_logs()

    _cache_service_directory()
    _cheap_retention_check()
    stamp_eventbridge_sequencers()
    one_event_per_multipart_upload()
    _name_unnamed_executions()
    _cors_on_form_uploads()
    _forward_lambda_invocations(args.functions)
    message_moves.install()
    distributed_map.install()
    from imgpipe.local.latency import LatencyMiddleware, load_table
    from pipeline.errors import ConfigError

    try:
        latency = load_table(args.latency)
    except ConfigError as e:
        print(f"imgpipe local: {e}", file=sys.stderr, flush=True)
        return 2
    app: Any = DomainDispatcherApplication(create_backend_app)
    dispatcher = app
    if args.state_dir:
        from pathlib import Path

        from imgpipe.local.state import StateDirError, StateKeeper

        try:
            keeper = StateKeeper(Path(args.state_dir))
        except StateDirError as e:
            print(f"imgpipe local: {e}", file=sys.stderr, flush=True)
            return 2
        keeper.install()
        app = keeper.wrap(app)
    from imgpipe.local.chaos import chaos_from_env

    app = chaos_from_env(app)  # faults for tools/chaos.py only, when its variables are set
    app = refuse_sigv2_requests(app)  # a refused request reaches nothing
    # Outermost: the delay is slept after every lock inside (the journal's) is released.
    app = LatencyMiddleware(app, latency, dispatcher=dispatcher)
    server = make_server(args.host, args.port, app, threaded=True,
                         request_handler=KeepAliveHandler)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


class KeepAliveHandler(MotoRequestHandler):
    """Werkzeug's server answers every request with `Connection: close`, because
    http.server cannot drain a request body the application left unread. This handler reads
    the body (Content-Length) before the application runs, so the connection can serve the
    next request: one TCP connection and one server thread per client connection instead of
    per request (three requests per photo). Chunked or HTTP/1.0 requests keep werkzeug's
    behaviour."""

    timeout = 300  # an idle connection's thread ends after 5 minutes
    # Headers and body go out in separate writes; with Nagle's algorithm the body of a
    # small response waits for the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True
    _reuse = False

    def run_wsgi(self) -> None:
        self._reuse = False
        if self.request_version != "HTTP/1.1" or "Transfer-Encoding" in self.headers:
            return super().run_wsgi()
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            del self.headers["Expect"]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        connection_file = self.rfile
        self.rfile = io.BytesIO(body)
        self._reuse = len(body) == length
        try:
            super().run_wsgi()
        finally:
            self.rfile = connection_file

    def send_header(self, keyword: str, value: str) -> None:
        if self._reuse and keyword.lower() == "connection" and value.lower() == "close":
            return
        super().send_header(keyword, value)


class EngineLogFormatter(logging.Formatter):
    """One short line per engine message: its error name when it has one, else its start."""

    def format(self, record: logging.LogRecord) -> str:
        import re

        text = " ".join(record.getMessage().split())
        error = re.search(r"\bError=([A-Za-z0-9_.]+)", text)
        if error:
            text = (f"a state failed with {error.group(1)} (describe-execution or `imgpipe "
                    "backfill` show the cause)")
        if len(text) > ENGINE_LINE_LIMIT:
            text = text[:ENGINE_LINE_LIMIT - 3] + "..."
        return f"emulator (Step Functions): {text}"


def shorten_engine_logs() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EngineLogFormatter())
    engine = logging.getLogger(ENGINE_LOGGER)
    engine.addHandler(handler)
    engine.propagate = False


def _exit_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _cache_service_directory() -> None:
    import moto.backends

    modules = tuple(moto.backends.list_of_moto_modules())
    setattr(moto.backends, "list_of_moto_modules", lambda: modules)  # noqa: B010


def _cheap_retention_check() -> None:
    from moto.sqs.models import SQSBackend

    setattr(SQSBackend, "is_message_valid_based_on_retention_period",  # noqa: B010
            within_retention)


def within_retention(backend: Any, queue_name: str, message: Any) -> bool:
    """moto's retention check, reading only the queue's retention period."""
    from moto.core.utils import unix_time

    retention_s = int(backend.get_queue(queue_name).message_retention_period)
    return bool(retention_s + message.sent_timestamp / 1000 > unix_time())


def _cors_on_form_uploads() -> None:
    """A browser's form upload (S3 POST object, what presigned POSTs are for) gets the
    bucket's CORS headers, as S3 sends them; moto 5.2 adds them to other requests only,
    so the upload page could not read its own upload's answer."""
    from moto.s3.responses import S3Response

    original = S3Response._bucket_response_post

    def post(self: Any, request: Any, bucket_name: str) -> Any:
        self.path = self._get_path(request)  # what is_delete_keys reads (moto sets it later)
        refusal = None if self.is_delete_keys() else sigv2_post_refusal(
            {k: v[0] for k, v in self.querystring.items() if v})
        status, headers, body = refusal or original(self, request, bucket_name)
        if not self.is_delete_keys():
            self.bucket_name = bucket_name
            headers = {**self._get_cors_headers_other(), **headers}
        return status, headers, body

    setattr(S3Response, "_bucket_response_post", post)  # noqa: B010


SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"
# S3's answer to a SigV2-signed request for a bucket that accepts only SigV4 (every bucket
# created since June 2020, every region opened since 2014): tests/events/
# s3_error_sigv2_refused.xml holds the shape as S3 sends it.
SIGV2_REFUSED = ("The authorization mechanism you have provided is not supported. "
                 f"Please use {SIGV4_ALGORITHM}.")


def _sigv2_refused_body() -> str:
    request_id = uuid.uuid4().hex[:16].upper()
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>InvalidRequest</Code><Message>{SIGV2_REFUSED}</Message>"
            f"<RequestId>{request_id}</RequestId><HostId>{request_id}</HostId></Error>")


def refuse_sigv2_requests(app: Any) -> Any:
    """WSGI middleware: an S3 request signed with SigV2 - `Authorization: AWS KEY:SIG`, or a
    presigned URL's `AWSAccessKeyId` and `Signature` - is answered as S3 answers it for a
    bucket created today, before moto sees it (both forms are S3's alone: other services'
    SigV2 names itself `SignatureVersion=2`, and botocore signs them with SigV4)."""
    from urllib.parse import parse_qs

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        if authorization.startswith("AWS ") or ("AWSAccessKeyId" in query
                                                and "Signature" in query):
            body = _sigv2_refused_body().encode()
            start_response("400 Bad Request", [("Content-Type", "application/xml"),
                                               ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return wrapped


def sigv2_post_refusal(fields: Mapping[str, str]) -> tuple[int, dict[str, str], str] | None:
    """S3's answer to a form upload (POST object) whose `fields` are not signed with
    Signature Version 4 (`x-amz-algorithm` AWS4-HMAC-SHA256, with its credential, date and
    signature), or None for a SigV4 form. Field names are case-insensitive, as in S3."""
    names = {k.lower(): v for k, v in fields.items()}
    signed_v4 = names.get("x-amz-algorithm") == SIGV4_ALGORITHM and all(
        names.get(f) for f in ("x-amz-credential", "x-amz-date", "x-amz-signature"))
    if signed_v4:
        return None
    return 400, {"Content-Type": "application/xml"}, _sigv2_refused_body()


def _name_unnamed_executions() -> None:
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    original = StepFunctionsParserBackend.start_execution

    def start_execution(backend: Any, state_machine_arn: str, name: Any = None,
                        *args: Any, **kwargs: Any) -> Any:
        return original(backend, state_machine_arn, name or str(uuid.uuid4()), *args,
                        **kwargs)

    setattr(StepFunctionsParserBackend, "start_execution", start_execution)  # noqa: B010


def _forward_lambda_invocations(functions_url: str) -> None:
    """moto's LambdaBackend.invoke is the one seam every caller goes through. Errors come
    back the way Lambda reports them (`X-Amz-Function-Error` and an error payload), so the
    state machine's Retry and Catch see what they would on AWS."""
    from moto.awslambda.models import LambdaBackend

    original = LambdaBackend.invoke

    def invoke(backend: Any, function_name: str, qualifier: Any, body: Any, headers: Any,
               response_headers: Any) -> Any:
        name = function_name.split(":function:")[-1].split(":")[0]
        data = body.encode() if isinstance(body, str) else (body or b"{}")
        kind = (headers or {}).get("X-Amz-Invocation-Type") or "RequestResponse"
        request = urllib.request.Request(invoke_url(functions_url, name), data=data,
                                         method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "X-Amz-Invocation-Type": kind})
        try:
            with urllib.request.urlopen(request) as response:
                payload: bytes = response.read()
                error = response.headers.get("X-Amz-Function-Error")
        except urllib.error.HTTPError as e:
            if e.code == 404:  # not one of ours: moto's own behaviour
                return original(backend, function_name, qualifier, body, headers,
                                response_headers)
            payload, error = _service_error(f"function host answered {e.code}: {e.reason}")
        except OSError as e:
            payload, error = _service_error(f"function host unreachable: {e}")
        if error:
            response_headers["x-amz-function-error"] = error
        response_headers["Content-Length"] = str(len(payload))
        return payload

    setattr(LambdaBackend, "invoke", invoke)  # noqa: B010


def _service_error(message: str) -> tuple[bytes, str]:
    return json.dumps({"errorType": SERVICE_ERROR, "errorMessage": message}).encode(), \
        "Unhandled"


if __name__ == "__main__":
    sys.exit(main())
