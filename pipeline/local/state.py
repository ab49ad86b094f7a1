"""`imgpipe local --state-dir DIR`: the emulator's data kept across restarts, kill -9 included.

Runs inside the emulator process (`pipeline.local.emulator`). Two journals, appended as
things happen, so a stop at any moment (kill -9 included) loses nothing that was answered:

- `requests.journal`: every successful S3 write (PUT/POST/DELETE: objects, multipart
  parts, deletions, bucket settings) and DynamoDB write (items and tables), as the raw
  HTTP request (headers and body). These requests run one at a time, so the journal's
  order is the order their effects happened in. On restart they are replayed, in order,
  straight into the emulator's application: S3 objects get the same bytes and ETags, and
  conditional DynamoDB writes decide as they did.
- `queues.journal`: every message that enters an SQS queue (a SendMessage, an S3
  notification, a move to the dead-letter queue) and every deletion and purge. On restart
  the messages still in a queue come back, visible, with their IDs, bodies and attributes.
  The journal is then rewritten to just those messages.

Replayed S3 writes send no notifications (their messages are restored from the queue
journal instead, so nothing is delivered twice). Each record is one `write` of a frame
(`IMGJ`, two lengths, a JSON header, the body): a frame cut by a kill is dropped at the
next start. An exclusive lock on `DIR/.lock` keeps a second stack off the same directory.

Limits: Step Functions executions are not kept (a backfill that was running must be
started again; what it finished is skipped). S3 version IDs, LastModified times and SQS
receive counts are new after a restart. The request journal only grows: replay time grows
with the number of writes ever made (see the README), and the directory holds every
version of every object written.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["StateKeeper", "RESTORE_PATH", "request_restore"]

RESTORE_PATH = "/_imgpipe/state/restore"
_MAGIC = b"IMGJ"
_FRAME = struct.Struct(">4sII")
_DYNAMODB_WRITES = {
    "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems",
    "CreateTable", "DeleteTable", "UpdateTable", "UpdateTimeToLive",
}
_ENVIRON_KEYS = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "REQUEST_URI",
                 "SCRIPT_NAME", "CONTENT_TYPE", "CONTENT_LENGTH", "SERVER_NAME",
                 "SERVER_PORT", "SERVER_PROTOCOL")
_UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Journal:
    """Append-only frames of (JSON header, bytes body); each append is one write(2)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, header: dict[str, Any], body: bytes = b"") -> None:
        head = json.dumps(header, ensure_ascii=True).encode("ascii")
        frame = _FRAME.pack(_MAGIC, len(head), len(body)) + head + body
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, frame)

    def read(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Every complete frame; a torn last frame (a kill mid-write) is cut off."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        pos = 0
        while pos + _FRAME.size <= len(data):
            magic, head_len, body_len = _FRAME.unpack_from(data, pos)
            end = pos + _FRAME.size + head_len + body_len
            if magic != _MAGIC or end > len(data):
                break
            head = data[pos + _FRAME.size:pos + _FRAME.size + head_len]
            yield json.loads(head), data[pos + _FRAME.size + head_len:end]
            pos = end
        if pos < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(pos)

    def replace(self, frames: Iterable[tuple[dict[str, Any], bytes]]) -> None:
        """Rewrite the journal as `frames` (atomically: a kill leaves the old one)."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for header, body in frames:
                head = json.dumps(header, ensure_ascii=True).encode("ascii")
                f.write(_FRAME.pack(_MAGIC, len(head), len(body)) + head + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class StateKeeper:
    """Journals the emulator's writes and restores them; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._lock_file = open(directory / ".lock", "w")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SystemExit(f"imgpipe local: the state directory {directory} is in use by "
                             "another running stack; stop it or choose another "
                             "--state-dir") from None
        self.requests = Journal(directory / "requests.journal")
        self.queues = Journal(directory / "queues.journal")
        self.recording = False
        self._replaying = threading.local()
        self._write_lock = threading.Lock()

    # ---- wiring ------------------------------------------------------------------------

    def install(self) -> None:
        """Patch moto's SQS queues and S3 notifications (this process only)."""
        from moto.s3 import notifications
        from moto.sqs.models import Queue as SqsQueue
        from moto.sqs.models import SQSBackend

        add, delete, purge = SqsQueue.add_message, SqsQueue.delete_message, \
            SQSBackend.purge_queue
        send_event = notifications.send_event
        keeper = self

        def add_message(queue: Any, message: Any) -> None:
            add(queue, message)
            if keeper.recording and message in queue._messages:
                keeper.queues.append(_message_header(queue, message))

        def delete_message(queue: Any, receipt_handle: str) -> None:
            ids = [m.id for m in queue._messages if m.had_receipt_handle(receipt_handle)]
            delete(queue, receipt_handle)
            if keeper.recording:
                for message_id in ids:
                    keeper.queues.append({"op": "delete", "id": message_id})

        def purge_queue(backend: Any, queue_name: str) -> None:
            queue = backend.get_queue(queue_name)
            ids = [m.id for m in queue._messages]
            purge(backend, queue_name)
            if keeper.recording:
                for message_id in ids:
                    keeper.queues.append({"op": "delete", "id": message_id})

        def quiet_send_event(*args: Any, **kwargs: Any) -> Any:
            if getattr(keeper._replaying, "active", False):
                return None  # the messages it sent the first time come from queues.journal
            return send_event(*args, **kwargs)

        setattr(SqsQueue, "add_message", add_message)  # noqa: B010
        setattr(SqsQueue, "delete_message", delete_message)  # noqa: B010
        setattr(SQSBackend, "purge_queue", purge_queue)  # noqa: B010
        setattr(notifications, "send_event", quiet_send_event)  # noqa: B010

    def wrap(self, app: WsgiApp) -> WsgiApp:
        """The WSGI application with journaling of writes and the restore endpoint."""

        def application(environ: dict[str, Any], start_response: Callable[..., Any]
                        ) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == RESTORE_PATH and environ["REQUEST_METHOD"] == "POST":
                body = json.dumps(self.restore(app)).encode()
                start_response("200 OK", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body)))])
                return [body]
            if not self.recording or not _is_write(environ):
                return app(environ, start_response)
            length = int(environ.get("CONTENT_LENGTH") or 0)
            chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
            request_body = (environ["wsgi.input"].read() if chunked else
                            environ["wsgi.input"].read(length) if length > 0 else b"")
            environ["wsgi.input"] = io.BytesIO(request_body)
            with self._write_lock:  # the journal's order is the order of the effects
                status, headers, response = _call(app, environ)
                if int(status.split()[0]) < 400:
                    self.requests.append(_request_header(environ, response), request_body)
            start_response(status, headers)
            return [response]

        return application

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
        live = _live_messages(self.queues.read())
        restored = _restore_messages(live)
        self.queues.replace((m, b"") for m in live)
        self.requests.open()
        self.queues.open()
        self.recording = True
        return {"writes": replayed, "failed": failed, "messages": restored,
                "seconds": round(time.monotonic() - started, 3)}


# ---- requests --------------------------------------------------------------------------


def _is_write(environ: dict[str, Any]) -> bool:
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target.startswith("DynamoDB_"):
        return target.split(".", 1)[-1] in _DYNAMODB_WRITES
    if environ.get("REQUEST_METHOD") not in ("PUT", "POST", "DELETE"):
        return False
    auth = str(environ.get("HTTP_AUTHORIZATION", "")) + str(environ.get("QUERY_STRING", ""))
    return "/s3/aws4_request" in auth or "%2Fs3%2Faws4_request" in auth


def _call(app: WsgiApp, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
        got["status"], got["headers"] = status, headers

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return got["status"], got["headers"], body


def _request_header(environ: dict[str, Any], response: bytes) -> dict[str, Any]:
    header: dict[str, Any] = {
        "environ": {k: environ[k] for k in _ENVIRON_KEYS if k in environ},
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
    }
    if "uploads" in str(environ.get("QUERY_STRING", "")).split("&"):
        found = _UPLOAD_ID.search(response)  # CreateMultipartUpload: remember its ID
        if found:
            header["upload_id"] = found.group(1).decode()
    return header


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
    status, _, response = _call(app, environ)
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
