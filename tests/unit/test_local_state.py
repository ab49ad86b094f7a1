"""The journals behind `imgpipe local --state-dir` (against a real emulator and damaged
state directories: tests/functional/test_state_dir.py; the whole story: tests/e2e)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from imgpipe.local.state import (
    FILE_HEADER,
    Journal,
    StateDirError,
    StateKeeper,
    _live_messages,
    is_write,
    service_of,
)


def test_a_record_cut_by_a_kill_is_dropped_and_the_file_mended(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.open()
    journal.append({"n": 1}, b"first body")
    journal.append({"n": 2}, b"\x00\xff binary")
    whole = (tmp_path / "j").read_bytes()
    journal.append({"n": 3}, b"x" * 1000)
    data = (tmp_path / "j").read_bytes()
    (tmp_path / "j").write_bytes(data[:len(whole) + 30])  # killed in the middle of record 3
    assert list(journal.read()) == [({"n": 1}, b"first body"), ({"n": 2}, b"\x00\xff binary")]
    assert [d.cut for d in journal.damage] == [True]
    assert (tmp_path / "j").read_bytes() == whole, "the torn tail is cut off"
    journal.close()
    journal.open()
    journal.append({"n": 4})
    assert [h["n"] for h, _ in journal.read()] == [1, 2, 4]
    assert journal.damage == []


def test_a_flipped_byte_anywhere_costs_one_record_and_nothing_is_truncated(
        tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.open()
    offsets = [journal.append({"n": n}, bytes([n]) * 300) for n in range(55)]
    data = (tmp_path / "j").read_bytes()
    for spot in (offsets[3] + 5, offsets[3] + 30, offsets[3] + 200):  # length, header, body
        damaged = bytearray(data)
        damaged[spot] ^= 0x10
        (tmp_path / "j").write_bytes(bytes(damaged))
        assert [h["n"] for h, _ in journal.read()] == [n for n in range(55) if n != 3]
        assert [(d.offset, d.length, d.cut) for d in journal.damage] == \
            [(offsets[3], offsets[4] - offsets[3], False)]
        assert (tmp_path / "j").read_bytes() == bytes(damaged), "nothing truncated"
    assert data.startswith(FILE_HEADER)


def test_a_write_the_disk_refuses_leaves_the_journal_as_it_was(tmp_path: Path) -> None:
    import resource
    import signal

    journal = Journal(tmp_path / "j")
    journal.open()
    journal.append({"n": 1}, b"kept")
    before = (tmp_path / "j").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 100, hard))
    try:
        with pytest.raises(Exception, match="write was refused") as refused:
            journal.append({"n": 2}, b"y" * 1000)  # a short write, then EFBIG
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert type(refused.value).__name__ == "JournalError"
    assert (tmp_path / "j").read_bytes() == before, "the short write was taken back"
    journal.append({"n": 3})
    assert [h["n"] for h, _ in journal.read()] == [1, 3] and journal.damage == []


def test_the_messages_left_are_the_last_add_of_each_id_not_deleted_since() -> None:
    def add(mid: str, queue: str) -> tuple[dict[str, str], bytes]:
        return {"op": "add", "id": mid, "queue": queue}, b""

    frames = [
        add("a", "ingest"), add("b", "ingest"), add("c", "ingest"),
        ({"op": "delete", "id": "a"}, b""),  # processed
        add("b", "dlq"),  # moved to the DLQ after its last receive
        ({"op": "delete", "id": "never-added"}, b""),  # an S3 test event of an earlier run
    ]
    live = _live_messages(frames)
    assert [(m["id"], m["queue"]) for m in live] == [("c", "ingest"), ("b", "dlq")]


def test_one_stack_at_a_time_per_state_directory(tmp_path: Path) -> None:
    first = StateKeeper(tmp_path / "state")
    with pytest.raises(StateDirError, match="in use by another running stack"):
        StateKeeper(tmp_path / "state")
    assert first.directory == tmp_path / "state"


def _environ(method: str, path: str, headers: dict[str, str] | None = None,
             query: str = "", body: bytes = b"", content_type: str = "") -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
        "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "127.0.0.1:4566", "wsgi.input": io.BytesIO(body),
    }
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in (headers or {}).items()})
    return environ


SIGNED = ("AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{}/aws4_request, "
          "SignedHeaders=host, Signature=0")


@pytest.mark.parametrize(("name", "environ", "write"), [
    ("presigned POST (credential in the form)", _environ(
        "POST", "/imgpipe-local", content_type="multipart/form-data; boundary=x",
        body=b"--x\r\nContent-Disposition: form-data; name=\"x-amz-credential\"\r\n\r\n"
             b"test/20260101/us-east-1/s3/aws4_request\r\n--x--\r\n"), True),
    ("unsigned PUT", _environ("PUT", "/imgpipe-local/incoming/a.jpg", body=b"jpeg"), True),
    ("presigned PUT", _environ("PUT", "/imgpipe-local/incoming/a.jpg", body=b"jpeg",
                               query="X-Amz-Credential=test%2F20260101%2Fus-east-1%2Fs3%2F"
                                     "aws4_request&X-Amz-Signature=0"), True),
    ("signed DELETE", _environ("DELETE", "/imgpipe-local/a.jpg",
                               {"Authorization": SIGNED.format("s3")}), True),
    ("unsigned GET", _environ("GET", "/imgpipe-local/a.jpg"), False),
    ("DynamoDB PutItem", _environ("POST", "/", {"Authorization": SIGNED.format("dynamodb"),
                                               "X-Amz-Target": "DynamoDB_20120810.PutItem"}),
     True),
    ("DynamoDB GetItem", _environ("POST", "/", {"Authorization": SIGNED.format("dynamodb"),
                                               "X-Amz-Target": "DynamoDB_20120810.GetItem"}),
     False),
    ("SQS SendMessage (its queue journal keeps it)", _environ(
        "POST", "/", {"Authorization": SIGNED.format("sqs"),
                      "X-Amz-Target": "AmazonSQS.SendMessage"}), False),
    ("Lambda CreateFunction (the template makes it)", _environ(
        "POST", "/2015-03-31/functions", {"Authorization": SIGNED.format("lambda")}), False),
])
def test_writes_are_recognised_by_what_they_do_not_how_they_are_signed(
        name: str, environ: dict[str, Any], write: bool) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    assert is_write(service_of(app, environ), environ) is write, name


def test_a_first_line_cut_by_a_kill_is_an_empty_journal(tmp_path: Path) -> None:
    from imgpipe.local.state import check_state_dir

    (tmp_path / "requests.journal").write_bytes(FILE_HEADER[:7])  # killed while creating it
    check_state_dir(tmp_path)
    journal = Journal(tmp_path / "requests.journal")
    assert list(journal.read()) == []
    journal.open()
    journal.append({"n": 1})
    assert [h["n"] for h, _ in journal.read()] == [1] and journal.damage == []
