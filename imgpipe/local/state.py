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

The format (version 2): a first line `imgpipe journal v2`, then records, each a 24-byte
frame head (`IMJ2`, the JSON header's length, the body's length, a CRC-32 of header and
body, a CRC-32 of those four fields) followed by the JSON header and the body. Reading
checks both checksums; a damaged record is skipped and named, and reading goes on at the
next intact record, so damage in the middle never costs the records after it. The only
bytes ever cut are a last record that was never completely written (never answered).
A journal of version 1 (no checksums) is converted once, its old file kept beside it.

Why not SQLite: it gives the same write-ahead and durability (WAL, synchronous=FULL), but
the journal is a log that is only appended and replayed in order, which a file does with
one write and one fdatasync; and SQLite in the standard library cannot salvage a damaged
page (no `.recover`): one bad page can make a whole table unreadable, where a log with a
checksum per record resynchronises on the next intact one.

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

import contextlib
import errno
import fcntl
import io
import json
import mmap
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.exceptions import HTTPException

from pipeline.errors import ConfigError

__all__ = ["StateKeeper", "StateDirError", "JournalError", "Journal", "RESTORE_PATH",
           "check_state_dir", "request_restore"]

RESTORE_PATH = "/_imgpipe/state/restore"
FILE_HEADER = b"imgpipe journal v2\n"
_MAGIC = b"IMJ2"
_FIELDS = struct.Struct(">4sIQI")  # magic, header length, body length, CRC-32 of both
_CHECK = struct.Struct(">I")  # CRC-32 of the fields above
FRAME_SIZE = _FIELDS.size + _CHECK.size
_V1_MAGIC = b"IMGJ"
_V1_FRAME = struct.Struct(">4sII")
JOURNALS = ("requests.journal", "queues.journal")
_DYNAMODB_WRITES = {
    "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems",
    "CreateTable", "DeleteTable", "UpdateTable", "UpdateTimeToLive",
}
_S3_WRITE_METHODS = ("PUT", "POST", "DELETE")
_ENVIRON_KEYS = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "REQUEST_URI",
                 "SCRIPT_NAME", "CONTENT_TYPE", "CONTENT_LENGTH", "SERVER_NAME",
                 "SERVER_PORT", "SERVER_PROTOCOL")
_UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class StateDirError(ConfigError):
    """A --state-dir the stack cannot use, said in one sentence."""


class JournalError(Exception):
    """A record could not be written durably; nothing was applied."""

    def __init__(self, path: Path, cause: OSError) -> None:
        self.path, self.cause = path, cause
        super().__init__(f"cannot write to {path} ({cause.strerror or cause}): the write was "
                         "refused, retry it once the state directory has room again")


@dataclass(frozen=True)
class Damage:
    """Bytes of a journal that are not an intact record."""

    path: Path
    offset: int
    length: int
    reason: str
    named: str = ""  # what the record was, when its header could still be read
    cut: bool = False  # a last record never completely written: removed from the file

    def sentence(self) -> str:
        if self.cut:
            return (f"{self.path}: cut off the last {self.length:,} byte(s) at offset "
                    f"{self.offset:,}, a record whose writing never finished (it was never "
                    "answered, so nothing is lost)")
        named = f" ({self.named})" if self.named else ""
        return (f"{self.path}: skipped {self.length:,} byte(s) at offset {self.offset:,}, "
                f"{self.reason}{named}; it was not restored, every intact record before "
                "and after it was (the damaged bytes are left in place)")


# ---- the journal file ------------------------------------------------------------------


def _frame(header: dict[str, Any], body: bytes) -> bytes:
    head = json.dumps(header, ensure_ascii=True).encode("ascii")
    fields = _FIELDS.pack(_MAGIC, len(head), len(body), zlib.crc32(body, zlib.crc32(head)))
    return fields + _CHECK.pack(zlib.crc32(fields)) + head + body


class Journal:
    """Records of (JSON header, bytes body), appended durably; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._end = 0
        self.damage: list[Damage] = []  # found by the latest read()

    # ---- writing -----------------------------------------------------------------------

    def open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            self._end = os.fstat(self._fd).st_size
            if self._end < len(FILE_HEADER):  # new, or its first line cut by a kill
                os.ftruncate(self._fd, 0)
                self._write(FILE_HEADER)
                self._end = len(FILE_HEADER)
        except OSError as e:
            raise StateDirError(_unwritable(self.path, e)) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, header: dict[str, Any], body: bytes = b"") -> int:
        """Write one record and flush it to disk; its offset. On any failure the file is
        put back as it was and `JournalError` is raised."""
        frame = _frame(header, body)
        with self._lock:
            if self._fd is None:
                raise JournalError(self.path, OSError(errno.EBADF, "the journal is not open"))
            start = self._end
            try:
                self._write(frame)
            except OSError as e:
                self._cut(start)
                raise JournalError(self.path, e) from e
            self._end = start + len(frame)
            return start

    def undo(self, offset: int) -> None:
        """Take back the last record (at `offset`): what it recorded was refused."""
        with self._lock:
            self._cut(offset)

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view, written = memoryview(data), 0
        while written < len(data):
            n = os.write(self._fd, view[written:])
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written += n
        os.fdatasync(self._fd)

    def _cut(self, offset: int) -> None:
        assert self._fd is not None
        # If even this fails, the torn record stays; reading skips it (bad checksum).
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, offset)
        self._end = os.fstat(self._fd).st_size

    # ---- reading -----------------------------------------------------------------------

    def read(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Every intact record, in order. Damage is skipped and listed in `self.damage`;
        a last record cut short by a kill or a full disk is removed from the file."""
        self.damage = []
        if not self.path.exists() or self.path.stat().st_size <= len(FILE_HEADER):
            return  # empty, or its first line only (perhaps cut by a kill): no records
        cut_at: int | None = None
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:len(FILE_HEADER)] != FILE_HEADER:
                raise StateDirError(_bad_header(self.path))
            pos, size = len(FILE_HEADER), len(data)
            while pos < size:
                got = _record_at(data, pos)
                if isinstance(got, tuple):
                    header, body, end = got
                    yield header, body
                    pos = end
                    continue
                reason, named, torn = got.reason, got.named, got.torn
                following = _next_record(data, pos + 1)
                if following is None and (torn or size - pos < FRAME_SIZE):
                    self.damage.append(Damage(self.path, pos, size - pos, reason, named,
                                              cut=True))
                    cut_at = pos
                    break
                end = size if following is None else following
                self.damage.append(Damage(self.path, pos, end - pos, reason, named))
                pos = end
        if cut_at is not None:
            with open(self.path, "r+b") as cut_file:
                cut_file.truncate(cut_at)
                os.fsync(cut_file.fileno())

    def replace(self, frames: Iterable[tuple[dict[str, Any], bytes]]) -> None:
        """Rewrite the journal as `frames` (atomically: a kill leaves the old one)."""
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(FILE_HEADER)
                for header, body in frames:
                    f.write(_frame(header, body))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class _Bad:
    reason: str
    named: str = ""
    torn: bool = False  # an intact frame head whose record runs past the end of the file


def _record_at(data: Any, pos: int) -> tuple[dict[str, Any], bytes, int] | _Bad:
    size = len(data)
    if pos + FRAME_SIZE > size:
        return _Bad("the start of a record cut short", torn=True)
    magic, head_len, body_len, crc = _FIELDS.unpack_from(data, pos)
    (check,) = _CHECK.unpack_from(data, pos + _FIELDS.size)
    if magic != _MAGIC:
        return _Bad("bytes that are not the start of a record")
    if zlib.crc32(data[pos:pos + _FIELDS.size]) != check:
        return _Bad("a record whose length fields are damaged")
    start = pos + FRAME_SIZE
    end = start + head_len + body_len
    named = _name(data[start:min(start + head_len, size)])
    if end > size:
        return _Bad("a record cut short", named, torn=True)
    head, body = data[start:start + head_len], data[start + head_len:end]
    if zlib.crc32(body, zlib.crc32(head)) != crc:
        return _Bad("a record whose checksum does not match (its bytes changed on disk)",
                    named)
    try:
        header = json.loads(head)
    except ValueError:
        return _Bad("a record whose header is not JSON")
    if not isinstance(header, dict):
        return _Bad("a record whose header is not a JSON object")
    return header, body, end


def _next_record(data: Any, pos: int) -> int | None:
    """The offset of the next intact record at or after `pos`."""
    while True:
        found = data.find(_MAGIC, pos)
        if found < 0:
            return None
        if isinstance(_record_at(data, found), tuple):
            return int(found)
        pos = found + 1


def _name(head: bytes) -> str:
    """What a (damaged) record was, if its header can still be read."""
    try:
        header = json.loads(head)
    except ValueError:
        return ""
    if not isinstance(header, dict):
        return ""
    if "environ" in header:
        environ, headers = header.get("environ") or {}, header.get("headers") or {}
        target = str(headers.get("HTTP_X_AMZ_TARGET", ""))
        if target:
            return f"DynamoDB {target.split('.')[-1]}"
        return f"S3 {environ.get('REQUEST_METHOD', '?')} {environ.get('PATH_INFO', '?')}"
    if header.get("op") == "add":
        return f"message {header.get('id')} into queue {header.get('queue')}"
    if header.get("op") == "delete":
        return f"deletion of message {header.get('id')}"
    return ""


# ---- checking and converting a state directory -------------------------------------------


def _unwritable(path: Path, e: OSError) -> str:
    why = e.strerror or str(e)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"the state directory's file {path} cannot be written ({why}): it is "
                "read-only, immutable or on a read-only filesystem, and the stack journals "
                "every write there; make it writable (chmod u+w, chattr -i) or choose "
                "another --state-dir")
    return (f"the state directory's file {path} cannot be opened for writing ({why}); "
            "fix that or choose another --state-dir")


def _bad_header(path: Path) -> str:
    return (f"{path} does not start with the line {FILE_HEADER.decode().strip()!r}, so it is "
            "not an imgpipe journal or its first bytes are damaged; if only that line is "
            "damaged, write it back, otherwise move the file out of the state directory "
            "(the stack then starts without what it held)")


def check_state_dir(directory: Path) -> None:
    """Refuse, with one sentence (`StateDirError`), a --state-dir the stack cannot use:
    a file, a directory it cannot create or write, a journal it cannot write or read,
    a journal with a damaged first line, or a directory in use by another stack."""
    if directory.exists() and not directory.is_dir():
        raise StateDirError(f"--state-dir {directory} is a file, not a directory: give a "
                            "directory (it is created if it does not exist)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StateDirError(f"--state-dir {directory} cannot be created ({e.strerror or e}); "
                            "choose another --state-dir") from None
    lock = _lock(directory)
    lock.close()
    for name in JOURNALS:
        _check_journal(directory / name)


def _lock(directory: Path) -> Any:
    try:
        lock_file = open(directory / ".lock", "a")  # noqa: SIM115 - the caller keeps it
    except OSError as e:
        raise StateDirError(_unwritable(directory / ".lock", e)) from None
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.close()
        raise StateDirError(f"the state directory {directory} is in use by another running "
                            "stack; stop it or choose another --state-dir") from None
    return lock_file


def _check_journal(path: Path) -> None:
    if not path.exists():
        return
    if not path.is_file():
        raise StateDirError(f"{path} is not a file; move it out of the state directory")
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except OSError as e:
        raise StateDirError(_unwritable(path, e)) from None
    try:
        first = os.pread(fd, len(FILE_HEADER), 0)
    except OSError as e:
        raise StateDirError(f"{path} cannot be read ({e.strerror or e}); move it out of the "
                            "state directory or restore it from a backup") from None
    finally:
        os.close(fd)
    # A first line cut short can only be a kill while the file was created: still empty.
    if not FILE_HEADER.startswith(first) and not first.startswith(_V1_MAGIC):
        raise StateDirError(_bad_header(path))


def _convert_v1(path: Path) -> str | None:
    """A journal of version 1 (imgpipe before checksummed journals) rewritten as version
    2, the old file kept as `NAME.v1`; one sentence saying so, or None if not version 1."""
    if not path.exists():
        return None
    with open(path, "rb") as f:
        if f.read(len(_V1_MAGIC)) != _V1_MAGIC:
            return None
        data = _V1_MAGIC + f.read()
    old = path.with_name(path.name + ".v1")
    tmp = path.with_name(path.name + ".tmp")
    pos = records = 0
    try:
        with open(tmp, "wb") as out:
            out.write(FILE_HEADER)
            while pos + _V1_FRAME.size <= len(data):
                magic, head_len, body_len = _V1_FRAME.unpack_from(data, pos)
                end = pos + _V1_FRAME.size + head_len + body_len
                if magic != _V1_MAGIC or end > len(data):
                    break
                head = data[pos + _V1_FRAME.size:pos + _V1_FRAME.size + head_len]
                try:
                    header = json.loads(head)
                except ValueError:
                    break
                out.write(_frame(header, data[pos + _V1_FRAME.size + head_len:end]))
                records += 1
                pos = end
            out.flush()
            os.fsync(out.fileno())
        if not old.exists():
            os.link(path, old)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StateDirError(f"{path} is a journal of the previous format and could not be "
                            f"converted ({e.strerror or e}); free some space (the conversion "
                            "needs as much again), or start the previous imgpipe version "
                            "on it") from None
    left = (f"; {len(data) - pos:,} byte(s) from offset {pos:,} on could not be read in the "
            "old format (it has no checksums to resynchronise on) and were not converted"
            if pos < len(data) else "")
    return (f"{path} was in the previous journal format: converted {records:,} record(s) "
            f"to the new one{left}; the old file is kept as {old} (delete it once this "
            "stack has started well)")


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
        self._lock_file = _lock(directory)
        self.notes: list[str] = [note for name in JOURNALS
                                 if (note := _convert_v1(directory / name)) is not None]
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
                status, headers, response = _call(app, environ)
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
        status, headers, response = _call(app, environ)
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
