"""`--state-dir` against a real emulator process and a state directory damaged on purpose:
flipped bytes, truncation, a full filesystem, a read-only directory, a file, the previous
journal format. The emulator (`python -m imgpipe.local.emulator`) runs without the rest
of the stack: these tests are about what its journals keep."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from imgpipe.local.provision import local_session
from imgpipe.local.stack import _spawn_emulator, _wait_until_listening, free_port
from imgpipe.local.state import (
    FILE_HEADER,
    Journal,
    StateDirError,
    check_state_dir,
    request_restore,
)

BUCKET = "state-test"
TABLE = "state-test"
QUEUE = "state-test-events"
NO_RETRY = Config(retries={"mode": "standard", "max_attempts": 1})


class Emulator:
    def __init__(self, state: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._clients: dict[tuple[str, bool], Any] = {}
        self.proc = _spawn_emulator("127.0.0.1", self.port, "http://127.0.0.1:9", state)
        _wait_until_listening("127.0.0.1", self.port, self.proc)

    def client(self, service: str, config: Config | None = None) -> Any:
        key = (service, config is not None)
        if key not in self._clients:
            self._clients[key] = local_session("us-east-1").client(
                service, endpoint_url=self.url, config=config)
        return self._clients[key]

    def restore(self) -> dict[str, Any]:
        """What a restarted stack does: the queue (not journaled: the template makes it)
        comes first, then the replay."""
        self.client("sqs").create_queue(QueueName=QUEUE)
        return request_restore(self.url)

    def kill_9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@contextlib.contextmanager
def emulator(state: Path) -> Iterator[Emulator]:
    e = Emulator(state)
    try:
        yield e
    finally:
        if e.proc.poll() is None:
            e.kill_9()


def _provision(e: Emulator) -> None:
    """A bucket that notifies a queue, and a table: S3, DynamoDB and SQS journaled."""
    s3, sqs = e.client("s3"), e.client("sqs")
    s3.create_bucket(Bucket=BUCKET)
    queue_arn = sqs.get_queue_attributes(
        QueueUrl=sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"],
        AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]})
    e.client("dynamodb").create_table(
        TableName=TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}])


def _put(e: Emulator, name: str, config: Config | None = None) -> None:
    e.client("s3", config).put_object(Bucket=BUCKET, Key=name, Body=_body(name))
    e.client("dynamodb", config).put_item(TableName=TABLE, Item={"k": {"S": name}})


def _body(name: str) -> bytes:
    return f"BODY-{name}-".encode() * 64


def _objects(e: Emulator) -> dict[str, bytes]:
    s3 = e.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def _items(e: Emulator) -> set[str]:
    items = e.client("dynamodb").scan(TableName=TABLE, ConsistentRead=True)["Items"]
    return {i["k"]["S"] for i in items}


def _queued(e: Emulator) -> list[str]:
    sqs = e.client("sqs")
    url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    count = int(attributes["ApproximateNumberOfMessages"])
    bodies: list[dict[str, Any]] = []
    while len(bodies) < count:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                  VisibilityTimeout=60).get("Messages", [])
        bodies += [json.loads(m["Body"]) for m in got]
    assert sum(b.get("Event") == "s3:TestEvent" for b in bodies) == 1, "one test event"
    return sorted(r["s3"]["object"]["key"] for b in bodies for r in b.get("Records", []))


def _run_with(state: Path, names: list[str]) -> None:
    """A stack's life: provision, write `names`, killed -9."""
    with emulator(state) as e:
        e.restore()
        _provision(e)
        for name in names:
            _put(e, name)
        e.kill_9()


NAMES = [f"photo-{i}" for i in range(7)]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory of one stack's life that wrote NAMES (made once, copied)."""
    state = tmp_path_factory.mktemp("written") / "state"
    _run_with(state, NAMES)
    return state


def _copy(written: Path, tmp_path: Path) -> Path:
    import shutil

    state = tmp_path / "state"
    shutil.copytree(written, state)
    (state / ".lock").unlink(missing_ok=True)
    return state


@pytest.mark.parametrize("where", ["body", "length field", "header"])
def test_a_damaged_middle_record_is_named_and_every_record_around_it_kept(
        written: Path, tmp_path: Path, where: str) -> None:
    state = _copy(written, tmp_path)
    journal = state / "requests.journal"
    data = bytearray(journal.read_bytes())
    size = len(data)
    head = data.index(b"/photo-3")  # in the JSON header of photo-3's PUT
    frame = data.rindex(b"IMJ2", 0, head)
    spot = {"body": data.index(_body("photo-3")) + 100, "length field": frame + 7,
            "header": head + 2}[where]
    data[spot] ^= 0xFF
    journal.write_bytes(bytes(data))

    with emulator(state) as e:
        restored = e.restore()
        assert _items(e) == set(NAMES), "DynamoDB writes before and after it are all back"
        objects = _objects(e)
        assert sorted(objects) == [n for n in NAMES if n != "photo-3"]
        assert all(body == _body(name) for name, body in objects.items())
        assert _queued(e) == NAMES, "every notification is still queued"
    notes = restored["notes"]
    assert len(notes) == 1, notes
    assert f"{journal}: skipped" in notes[0] and f"at offset {frame:,}" in notes[0]
    if where == "body":  # its header is intact: the record is named
        assert "S3 PUT /state-test/photo-3" in notes[0]
    assert journal.stat().st_size == size, "nothing was truncated"


def test_a_journal_cut_in_its_last_record_loses_only_that_record(
        written: Path, tmp_path: Path) -> None:
    state = _copy(written, tmp_path)
    journal = state / "requests.journal"
    data = journal.read_bytes()
    last = data.rindex(b"IMJ2")
    journal.write_bytes(data[:last + 40])  # killed while writing it (a DynamoDB put)

    with emulator(state) as e:
        restored = e.restore()
        assert sorted(_objects(e)) == NAMES
        assert _items(e) == set(NAMES[:-1])
        _put(e, "after")
        e.kill_9()
    assert restored["notes"] == [
        f"{journal}: cut off the last 40 byte(s) at offset {last:,}, a record whose "
        "writing never finished (it was never answered, so nothing is lost)"]
    with emulator(state) as e:
        again = e.restore()
        assert _items(e) == {*NAMES[:-1], "after"}
    assert again["notes"] == [], "the cut was made once"


def test_a_damaged_queue_journal_keeps_the_messages_around_the_damage(
        written: Path, tmp_path: Path) -> None:
    state = _copy(written, tmp_path)
    journal = state / "queues.journal"
    data = bytearray(journal.read_bytes())
    spot = data.index(b"photo-2")
    data[spot] ^= 0x01
    journal.write_bytes(bytes(data))
    with emulator(state) as e:
        restored = e.restore()
        assert _queued(e) == [n for n in NAMES if n != "photo-2"]
    assert len(restored["notes"]) == 1 and "into queue state-test-events" in \
        restored["notes"][0]


class _Disk:
    """A state directory whose disk can be filled up and freed: a 2 MB tmpfs when the
    tests run as root (filled with a file), else the emulator's file-size limit
    (RLIMIT_FSIZE, set on the running process: its writes then fail as on a full disk)."""

    def __init__(self, mount: Path, tmpfs: bool) -> None:
        self.mount, self.tmpfs = mount, tmpfs
        self.filler = mount / "filler"

    def fill(self, e: Emulator) -> None:
        if self.tmpfs:
            with open(self.filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        else:
            import resource

            sizes = [p.stat().st_size for p in (self.mount / "state").glob("*.journal")]
            resource.prlimit(e.proc.pid, resource.RLIMIT_FSIZE,
                             (min(sizes), resource.RLIM_INFINITY))

    def free(self, e: Emulator) -> None:
        if self.tmpfs:
            self.filler.unlink()
        else:
            import resource

            resource.prlimit(e.proc.pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[_Disk]:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        yield _Disk(mount, tmpfs=False)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                   check=True)
    try:
        yield _Disk(mount, tmpfs=True)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_refuses_writes_before_applying_them_and_loses_nothing(
        small_disk: _Disk) -> None:
    state = small_disk.mount / "state"
    answered: list[str] = []
    with emulator(state) as e:
        e.restore()
        _provision(e)
        _put(e, "before")
        answered.append("before")
        small_disk.fill(e)
        with pytest.raises(ClientError) as s3_refused:
            e.client("s3", NO_RETRY).put_object(Bucket=BUCKET, Key="refused", Body=b"x" * 9000)
        with pytest.raises(ClientError) as dynamodb_refused:
            e.client("dynamodb", NO_RETRY).put_item(  # more than the last page's room
                TableName=TABLE, Item={"k": {"S": "refused"}, "pad": {"S": "x" * 9000}})
        sqs = e.client("sqs", NO_RETRY)
        url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
        with pytest.raises(ClientError) as sqs_refused:
            sqs.send_message(QueueUrl=url, MessageBody="refused" * 1500)
        assert "refused" not in _objects(e) and "refused" not in _items(e), \
            "a write that could not be journaled was not applied"
        assert _queued(e) == ["before"]
        small_disk.free(e)
        _put(e, "after")
        answered.append("after")
        e.kill_9()
    expected = {"s3": ("InternalError", 500), "dynamodb": ("InternalServerError", 500),
                "sqs": ("InternalFailure", 500)}
    for service, refused in (("s3", s3_refused), ("dynamodb", dynamodb_refused),
                             ("sqs", sqs_refused)):
        error = refused.value.response
        assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == \
            expected[service]
        assert ("No space left on device" if small_disk.tmpfs else "File too large") in \
            error["Error"]["Message"]
    documented = json.loads((Path(__file__).parents[1] / "events" /
                             "journal_refusals.json").read_text())
    assert {s: (d["code"], d["status"]) for s, d in documented["errors"].items()} == expected

    with emulator(state) as e:
        restored = e.restore()
        assert sorted(_objects(e)) == sorted(answered) and _items(e) == set(answered)
        assert _queued(e) == sorted(answered)
    assert restored["notes"] == [] and restored["failed"] == 0


def test_a_receive_that_moves_a_message_to_the_dlq_on_a_full_disk_still_answers(
        small_disk: _Disk) -> None:
    # The move cannot be journaled; refusing the receive would leave the messages it took
    # invisible for the visibility timeout with nobody holding them.
    state = small_disk.mount / "state"
    with emulator(state) as e:
        e.restore()
        sqs = e.client("sqs", NO_RETRY)
        dlq = sqs.create_queue(QueueName="state-test-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        url = sqs.create_queue(QueueName="state-test-work", Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": "1"})})["QueueUrl"]
        for body in ("poison", "good"):  # more than the last page's room, as moved
            sqs.send_message(QueueUrl=url, MessageBody=body + " " + "x" * 9000)
        first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                    VisibilityTimeout=0, WaitTimeSeconds=1)["Messages"]
        assert sorted(m["Body"][:6] for m in first) == ["good x", "poison"]
        sqs.send_message(QueueUrl=url, MessageBody="new")
        small_disk.fill(e)
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                     VisibilityTimeout=60, WaitTimeSeconds=1)
        assert [m["Body"] for m in answer.get("Messages", [])] == ["new"], \
            "the receive answered with the message it took"
        small_disk.free(e)
        moved = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10,
                                    WaitTimeSeconds=1)["Messages"]
        assert sorted(m["Body"][:6] for m in moved) == ["good x", "poison"]


def _make_unwritable(path: Path) -> contextlib.AbstractContextManager[None]:
    """Read-only for whoever runs the test: a read-only bind mount for root (whom
    permissions do not stop), the permission bits otherwise."""

    @contextlib.contextmanager
    def read_only() -> Iterator[None]:
        if os.geteuid() == 0:
            subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
            subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
            try:
                yield
            finally:
                subprocess.run(["umount", str(path)], check=True)
        else:
            path.chmod(0o500)
            try:
                yield
            finally:
                path.chmod(0o700)

    return read_only()


def test_a_state_dir_it_cannot_use_is_refused_with_one_sentence(
        written: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    with pytest.raises(StateDirError, match=r"is a file, not a directory"):
        check_state_dir(a_file)

    state = _copy(written, tmp_path)
    with _make_unwritable(state), pytest.raises(StateDirError) as read_only:
        check_state_dir(state)
    assert "cannot be written (Read-only file system)" in str(read_only.value) or \
        "cannot be written (Permission denied)" in str(read_only.value)

    journal = state / "requests.journal"
    data = journal.read_bytes()
    journal.write_bytes(b"imgpipe journal v9\n" + data[len(FILE_HEADER):])
    with pytest.raises(StateDirError, match=r"does not start with the line 'imgpipe journal "
                                            r"v2'.*write it back"):
        check_state_dir(state)
    journal.write_bytes(data)

    with open(state / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StateDirError, match="in use by another running stack"):
            check_state_dir(state)
    check_state_dir(state)


@pytest.mark.parametrize("problem", ["a file", "read-only", "in use"])
def test_imgpipe_local_says_why_it_cannot_use_a_state_dir_in_one_line(
        tmp_path: Path, problem: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with contextlib.ExitStack() as undo:
        if problem == "a file":
            state.rmdir()
            state.write_text("a file")
        elif problem == "read-only":
            undo.enter_context(_make_unwritable(state))
        else:
            held = undo.enter_context(open(state / ".lock", "a"))
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = subprocess.run(
            [sys.executable, "-m", "imgpipe.cli", "local", "--port", str(free_port()),
             "--state-dir", str(state)],
            capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgpipe local: ") and \
        str(state) in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_journal_of_the_previous_format_is_converted_and_kept(
        written: Path, tmp_path: Path) -> None:
    state = _copy(written, tmp_path)
    for name in ("requests.journal", "queues.journal"):  # as the previous version wrote
        path = state / name
        v1 = b"".join(_v1_frame(header, body) for header, body in Journal(path).read())
        path.write_bytes(v1)
    with emulator(state) as e:
        restored = e.restore()
        assert sorted(_objects(e)) == NAMES and _items(e) == set(NAMES)
        assert _queued(e) == NAMES
    assert len(restored["notes"]) == 2
    assert restored["notes"][0].startswith(f"{state / 'requests.journal'} was in the "
                                           "previous journal format: converted")
    assert (state / "requests.journal.v1").exists()
    assert (state / "requests.journal").read_bytes().startswith(FILE_HEADER)


def _v1_frame(header: dict[str, Any], body: bytes) -> bytes:
    import struct

    head = json.dumps(header).encode()
    return struct.pack(">4sII", b"IMGJ", len(head), len(body)) + head + body


def test_an_immutable_journal_is_refused_with_one_sentence(written: Path,
                                                           tmp_path: Path) -> None:
    """chattr +i where the tests may (root), a read-only file otherwise."""
    state = _copy(written, tmp_path)
    journal = state / "queues.journal"
    root = os.geteuid() == 0
    if root:
        subprocess.run(["chattr", "+i", str(journal)], check=True)
    else:
        journal.chmod(0o400)
    try:
        with pytest.raises(StateDirError) as refused:
            check_state_dir(state)
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(journal)], check=True)
        else:
            journal.chmod(0o600)
    assert str(refused.value) == (
        f"the state directory's file {journal} cannot be written "
        f"({'Operation not permitted' if root else 'Permission denied'}): it is read-only, "
        "immutable or on a read-only filesystem, and the stack journals every write there; "
        "make it writable (chmod u+w, chattr -i) or choose another --state-dir")
