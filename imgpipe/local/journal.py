"""The journal files of `imgpipe local --state-dir DIR` (see `imgpipe.local.state`): their
format, writing, reading past damage, and the checks a state directory must pass.

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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

__all__ = ["Journal", "Damage", "JournalError", "StateDirError", "FILE_HEADER", "FRAME_SIZE",
           "JOURNALS", "check_state_dir", "lock_state_dir", "convert_v1"]

FILE_HEADER = b"imgpipe journal v2\n"
_MAGIC = b"IMJ2"
_FIELDS = struct.Struct(">4sIQI")  # magic, header length, body length, CRC-32 of both
_CHECK = struct.Struct(">I")  # CRC-32 of the fields above
FRAME_SIZE = _FIELDS.size + _CHECK.size
_V1_MAGIC = b"IMGJ"
_V1_FRAME = struct.Struct(">4sII")
JOURNALS = ("requests.journal", "queues.journal")


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
    lock = lock_state_dir(directory)
    lock.close()
    for name in JOURNALS:
        _check_journal(directory / name)


def lock_state_dir(directory: Path) -> Any:
    """The state directory's lock file, held exclusively (another stack is refused)."""
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


def convert_v1(path: Path) -> str | None:
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
