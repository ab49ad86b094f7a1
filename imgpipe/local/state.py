"""`imgpipe local --state-dir DIR`: the emulator's data kept across restarts, kill -9 included.

Runs inside the emulator process (`imgpipe.local.emulator`). Two journals, written ahead
of what they record, so a stop at any moment (kill -9 included) loses nothing that was
answered:

- `requests.journal`: every request that changes S3 or DynamoDB, recognised by what it
  does (the service moto routes it to, its method, its DynamoDB operation), not by how it
  is signed: presigned POSTs and PUTs and unsigned PUTs are writes too. Each is written
  and flushed to disk (fdatasync) *before* the emulator applies it, and answered after;
  a request the emulator then refuses (4xx/5xx) is taken back out (it is the journal's
  last record: these requests run one at a time, so the journal's order is the order
  their effects happened in). On restart they are replayed, in order, straight into the
  emulator's application: S3 objects get the same bytes and ETags, and conditional
  DynamoDB writes decide as they did.
- `queues.journal`: every message that enters an SQS queue (a SendMessage, an S3
  notification, a move to the dead-letter queue) and every deletion and purge, written
  before the queue changes. On restart the messages still in a queue come back, visible,
  with their IDs, bodies and attributes; the journal is then rewritten to just those.

A write that cannot be journaled (a full disk, a file made read-only) is not applied: the
client gets the service's own retryable error (S3 `InternalError`, DynamoDB
`InternalServerError`, SQS `InternalFailure`, all HTTP 500; tests/events/
journal_refusals.json) and the SDK retries it.

The journal files' format, their reading past damage and the checks a state directory
must pass are in `imgpipe.local.journal`.

Replayed S3 writes send no notifications (their messages are restored from the queue
journal instead, so nothing is delivered twice). An exclusive lock on `DIR/.lock` keeps a
second stack off the same directory.

Limits: Step Functions executions are not kept (a backfill that was running must be
started again; what it finished is skipped). S3 version IDs, LastModified times and SQS
receive counts are new after a restart. The request journal only grows: replay time grows
with the number of writes ever made (see the README), and the directory holds every
version of every object written.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from werkzeug.exceptions import HTTPException

from imgpipe.local.journal import (
    FILE_HEADER,
    JOURNALS,
    Journal,
    JournalError,
    StateDirError,
    check_state_dir,
    convert_v1,
    lock_state_dir,
)
from imgpipe.local.wsgi import WsgiApp, call

# Journal, its errors, FILE_HEADER and check_state_dir are named here too: callers of
# `--state-dir` find them where they find the keeper.
__all__ = ["StateKeeper", "StateDirError", "JournalError", "Journal", "FILE_HEADER",
           "RESTORE_PATH", "check_state_dir", "request_restore"]

RESTORE_PATH = "/_imgpipe/state/restore"
_DYNAMODB_WRITES = {
    "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems",
    "CreateTable", "DeleteTable", "UpdateTable", "UpdateTimeToLive",
}
_S3_WRITE_METHODS = ("PUT", "POST", "DELETE")
_ENVIRON_KEYS = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "REQUEST_URI",
                 "SCRIPT_NAME", "CONTENT_TYPE", "CONTENT_LENGTH", "SERVER_NAME",
                 "SERVER_PORT", "SERVER_PROTOCOL")
_UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")


# ---- the keeper ----------------------------------------------------------------------------


class _Refused(HTTPException):
    """Raised inside moto when a queue change cannot be journaled: moto answers it as an
    error response, which `StateKeeper.wrap` replaces with the service's own."""

    code = 500
    description = "the state directory cannot be written"


class StateKeeper:
    """Journals the emulator's writes and restores them; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        check_state_dir(directory)
        self.directory = directory
        self._lock_file = lock_state_dir(directory)
        self.notes: list[str] = [note for name in JOURNALS
                                 if (note := convert_v1(directory / name)) is not None]
        self.requests = Journal(directory / "requests.journal")
        self.queues = Journal(directory / "queues.journal")
        self.recording = False
        self._replaying = threading.local()
        self._request = threading.local()  # the queue journal's failure during a request
        self._write_lock = threading.Lock()

    # ---- wiring ------------------------------------------------------------------------

    def install(self) -> None:
        """Patch moto's SQS queues and S3 notifications (this process only)."""
        from moto.s3 import notifications
        from moto.sqs.models import Queue as SqsQueue
        from moto.sqs.models import SQSBackend

        add, delete, purge = SqsQueue.add_message, SqsQueue.delete_message, \
            SQSBackend.purge_queue
        send_event, send_test_event = notifications.send_event, notifications.send_test_event
        keeper = self

        def add_message(queue: Any, message: Any) -> None:
            if keeper.recording:
                try:
                    keeper.queues.append(_message_header(queue, message))
                except JournalError as e:
                    # A message that was received before is being moved to the DLQ by a
                    # ReceiveMessage: keep it (the journal still has it in its first queue,
                    # so a restart puts it back there) and let the receive answer, or the
                    # messages it took would stay invisible for the visibility timeout
                    # without anyone holding them. A new message is refused.
                    if not int(getattr(message, "approximate_receive_count", 0) or 0):
                        keeper._request.failure = e
                        raise _Refused() from e
            add(queue, message)
            if keeper.recording and message not in queue._messages:  # a FIFO duplicate
                keeper._journal_deletes([message.id])

        def delete_message(queue: Any, receipt_handle: str) -> None:
            ids = [m.id for m in queue._messages if m.had_receipt_handle(receipt_handle)]
            keeper._journal_deletes(ids)
            delete(queue, receipt_handle)

        def purge_queue(backend: Any, queue_name: str) -> None:
            keeper._journal_deletes([m.id for m in backend.get_queue(queue_name)._messages])
            purge(backend, queue_name)

        def quiet_send_event(*args: Any, **kwargs: Any) -> Any:
            if getattr(keeper._replaying, "active", False):
                return None  # the messages it sent the first time come from queues.journal
            return send_event(*args, **kwargs)

        setattr(SqsQueue, "add_message", add_message)  # noqa: B010
        setattr(SqsQueue, "delete_message", delete_message)  # noqa: B010
        setattr(SQSBackend, "purge_queue", purge_queue)  # noqa: B010
        def quiet_send_test_event(*args: Any, **kwargs: Any) -> Any:
            if getattr(keeper._replaying, "active", False):
                return None  # a notification configuration replayed: sent the first time
            return send_test_event(*args, **kwargs)

        setattr(notifications, "send_event", quiet_send_event)  # noqa: B010
        setattr(notifications, "send_test_event", quiet_send_test_event)  # noqa: B010

    def _journal_deletes(self, ids: list[str]) -> None:
        if not self.recording:
            return
        for message_id in ids:
            try:
                self.queues.append({"op": "delete", "id": message_id})
            except JournalError as e:
                self._request.failure = e
                raise _Refused() from e

    def wrap(self, app: WsgiApp) -> WsgiApp:
        """The WSGI application with journaling of writes and the restore endpoint."""

        def application(environ: dict[str, Any], start_response: Callable[..., Any]
                        ) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == RESTORE_PATH and environ["REQUEST_METHOD"] == "POST":
                body = json.dumps(self.restore(app)).encode()
                start_response("200 OK", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body)))])
                return [body]
            if not self.recording or environ.get("REQUEST_METHOD") in ("GET", "HEAD",
                                                                       "OPTIONS"):
                return app(environ, start_response)  # changes nothing: straight through
            self._request.failure = None
            service = service_of(app, environ)
            if not is_write(service, environ):
                status, headers, response = call(app, environ)
                if self._request.failure is not None:
                    status, headers, response = refusal(service, environ,
                                                        self._request.failure)
                start_response(status, headers)
                return [response]
            length = int(environ.get("CONTENT_LENGTH") or 0)
            chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
            request_body = (environ["wsgi.input"].read() if chunked else
                            environ["wsgi.input"].read(length) if length > 0 else b"")
            environ["wsgi.input"] = io.BytesIO(request_body)
            with self._write_lock:  # the journal's order is the order of the effects
                status, headers, response = self._journaled(app, environ, request_body,
                                                            service)
            start_response(status, headers)
            return [response]

        return application

    def _journaled(self, app: WsgiApp, environ: dict[str, Any], request_body: bytes,
                   service: str) -> tuple[str, list[tuple[str, str]], bytes]:
        """Journal, apply, answer: a write that cannot be journaled is not applied."""
        header = _request_header(environ)
        try:
            offset = self.requests.append(header, request_body)
        except JournalError as e:
            return refusal(service, environ, e)
        status, headers, response = call(app, environ)
        failure = self._request.failure
        if failure is not None or int(status.split()[0]) >= 400:
            self.requests.undo(offset)
            if failure is not None:
                return refusal(service, environ, failure)
            return status, headers, response
        upload_id = _created_upload_id(environ, response)
        if upload_id:  # CreateMultipartUpload: its ID is needed to replay its parts
            self.requests.undo(offset)
            try:
                self.requests.append({**header, "upload_id": upload_id}, request_body)
            except JournalError as e:
                return refusal(service, environ, e)
        return status, headers, response

    # ---- restore -----------------------------------------------------------------------

    def restore(self, app: WsgiApp) -> dict[str, Any]:
        """Replay the journals into the (freshly provisioned) emulator, then record."""
        if self.recording:
            return {"error": "already restored"}
        started = time.monotonic()
        replayed = failed = 0
        upload_ids: dict[str, str] = {}
        self._replaying.active = True
        try:
            for header, body in self.requests.read():
                if _replay(app, header, body, upload_ids):
                    replayed += 1
                else:
                    failed += 1
        finally:
            self._replaying.active = False
        notes = list(self.notes) + [d.sentence() for d in self.requests.damage]
        live = _live_messages(self.queues.read())
        notes += [d.sentence() for d in self.queues.damage]
        restored = _restore_messages(live)
        if not self.queues.damage:  # damage stays in place for a person to look at
            try:
                self.queues.replace((m, b"") for m in live)
            except OSError as e:
                notes.append(f"{self.queues.path} could not be compacted ({e.strerror or e}); "
                             "it is kept as it was")
        self.requests.open()
        self.queues.open()
        self.recording = True
        return {"writes": replayed, "failed": failed, "messages": restored,
                "seconds": round(time.monotonic() - started, 3), "notes": notes}


# ---- requests --------------------------------------------------------------------------


def service_of(app: Any, environ: dict[str, Any]) -> str:
    """The moto backend a request goes to, decided as moto's dispatcher decides it (a
    request it cannot place goes to S3, as in moto)."""
    path = str(environ.get("PATH_INFO", ""))
    if path.startswith(("/moto-api", "/_imgpipe")):
        return "moto_api"
    infer = getattr(app, "infer_service_region_host", None)
    try:
        host = infer(environ, path) if infer is not None else None
        backend = app.get_backend_for_host(host) if host is not None else "s3"
    except Exception:  # moto fails such a request itself; journal it if it could write
        return "unknown"
    return str(backend or "s3")


def is_write(service: str, environ: dict[str, Any]) -> bool:
    """A request that changes S3 or DynamoDB, by what it does (not by how it is signed)."""
    method = environ.get("REQUEST_METHOD")
    if service == "dynamodb":
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        return method == "POST" and target.split(".", 1)[-1] in _DYNAMODB_WRITES
    if service in ("s3", "unknown"):
        return method in _S3_WRITE_METHODS and not environ.get("HTTP_X_AMZ_TARGET")
    return False


def refusal(service: str, environ: dict[str, Any], error: Exception
            ) -> tuple[str, list[tuple[str, str]], bytes]:
    """The service's own retryable error (HTTP 500) for a write that was not journaled,
    shaped as in tests/events/journal_refusals.json."""
    message = f"imgpipe local: {error}"
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if service == "dynamodb" or target.startswith("DynamoDB"):
        body = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                           "message": message}).encode()
        kind = "application/x-amz-json-1.0"
    elif target.startswith("AmazonSQS"):
        body = json.dumps({"__type": "com.amazonaws.sqs#InternalFailure",
                           "message": message}).encode()
        kind = "application/x-amz-json-1.0"
    else:
        from xml.sax.saxutils import escape

        code = "InternalFailure" if service == "sqs" else "InternalError"
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
                "</Error>").encode()
        kind = "application/xml"
    return "500 Internal Server Error", [("Content-Type", kind),
                                         ("Content-Length", str(len(body)))], body


def _request_header(environ: dict[str, Any]) -> dict[str, Any]:
    return {
        "environ": {k: environ[k] for k in _ENVIRON_KEYS if k in environ},
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
    }


def _created_upload_id(environ: dict[str, Any], response: bytes) -> str | None:
    if environ.get("REQUEST_METHOD") != "POST" or \
            "uploads" not in str(environ.get("QUERY_STRING", "")).split("&"):
        return None
    found = _UPLOAD_ID.search(response)
    return found.group(1).decode() if found else None


def _replay(app: WsgiApp, header: dict[str, Any], body: bytes,
            upload_ids: dict[str, str]) -> bool:
    environ: dict[str, Any] = dict(header["environ"])
    environ.update(header["headers"])
    query = str(environ.get("QUERY_STRING", ""))
    for old, new in upload_ids.items():  # parts and completions of a replayed upload
        if old in query:
            environ["QUERY_STRING"] = query.replace(old, new)
            for key in ("RAW_URI", "REQUEST_URI"):
                if key in environ:
                    environ[key] = str(environ[key]).replace(old, new)
    environ.update({
        "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "CONTENT_LENGTH": str(len(body)),
    })
    status, _, response = call(app, environ)
    if header.get("upload_id"):
        found = _UPLOAD_ID.search(response)
        if found:
            upload_ids[header["upload_id"]] = found.group(1).decode()
    return int(status.split()[0]) < 400


# ---- queues ----------------------------------------------------------------------------


def _message_header(queue: Any, message: Any) -> dict[str, Any]:
    return {
        "op": "add", "id": message.id, "account": queue.account_id, "region": queue.region,
        "queue": queue.name, "body": message.body,
        "attributes": message.message_attributes or {},
        "system_attributes": message.system_attributes or {},
        "group_id": message.group_id, "deduplication_id": message.deduplication_id,
    }


def _live_messages(frames: Iterable[tuple[dict[str, Any], bytes]]) -> list[dict[str, Any]]:
    """The messages still in a queue: the last `add` of each ID (a move to the DLQ is an
    add there), unless a delete came after it."""
    live: dict[str, dict[str, Any]] = {}
    for header, _ in frames:
        if header.get("op") == "add":
            live.pop(header["id"], None)
            live[header["id"]] = header
        elif header.get("op") == "delete":
            live.pop(header["id"], None)
    return list(live.values())


def _restore_messages(messages: list[dict[str, Any]]) -> int:
    from moto.sqs.models import Message, sqs_backends

    restored = 0
    for m in messages:
        try:
            queue = sqs_backends[m["account"]][m["region"]].get_queue(m["queue"])
        except Exception:  # the queue is not in the template any more: nothing to put back
            continue
        message = Message(m["id"], m["body"], m.get("system_attributes") or None)
        message.message_attributes = m.get("attributes") or {}
        message.group_id = m.get("group_id")
        message.deduplication_id = m.get("deduplication_id")
        message.mark_sent(delay_seconds=0)
        queue.add_message(message)
        restored += 1
    return restored


def request_restore(endpoint_url: str, timeout_s: float = 3600.0) -> dict[str, Any]:
    """Ask the emulator at `endpoint_url` to replay its state directory (from the stack)."""
    import urllib.request

    request = urllib.request.Request(endpoint_url.rstrip("/") + RESTORE_PATH, data=b"{}",
                                     method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result
