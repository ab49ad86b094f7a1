"""Waiting on S3 and DynamoDB overlaps the CPU work (issue 21): the core over moto with a
fixed delay added to every request, the order of events recorded, never their timing.

- the first object's read goes out with the read of the existing records (before, the
  CPUs idled through both round trips one after the other);
- later objects are read while earlier ones decode and the model runs, and each image's
  writes start while later images are still being decoded, without queueing behind
  other images' writes;
- nothing is in flight when `process` returns (Lambda freezes the process then);
- each fault still lands on its own image's outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pipeline.aws import Clients
from pipeline.classifier import Classifier
from pipeline.events import ObjectRef
from pipeline.factory import build_service
from pipeline.service import ClassificationService
from pipeline.settings import Settings
from tests.functional.conftest import BUCKET, MODEL, TABLE, sample

DELAY_S = 0.01  # per request: enough for requests to be seen in flight, not a timing
GATE_S = 2.0  # how long a gated request waits for what it waits for (a failed gate fails)
PHOTOS = ("coffee.jpg", "chelsea.jpg", "rocket.jpg", "astronaut.jpg", "hubble.jpg",
          "motorcycle.jpg")


class Log:
    """Events in the order they happened: ("start"/"end", what, detail)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.get_started = threading.Event()
        self.second_get_started = threading.Event()
        self.put_started = threading.Event()
        self.hold_get_of = ""  # this object's read waits for a record write to start
        self.put_quorum = 0  # each record write waits until this many are under way
        self.puts = threading.Condition()
        self.puts_in_flight = 0
        self.most_puts_in_flight = 0

    def add(self, kind: str, what: str, detail: str = "") -> int:
        with self.lock:
            self.events.append((kind, what, detail))
            return len(self.events) - 1

    def index(self, kind: str, what: str, detail: str = "") -> int:
        return next(i for i, e in enumerate(self.events) if e == (kind, what, detail))

    def open_spans(self) -> list[tuple[str, str]]:
        counts: dict[tuple[str, str], int] = {}
        for kind, what, detail in self.events:
            counts[(what, detail)] = counts.get((what, detail), 0) + (kind == "start") - (
                kind == "end")
        return [k for k, n in counts.items() if n]

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        """The service's and classifier's spans (`pipeline.observe.Spans`)."""
        label = threading.current_thread().name
        if name == "inference":  # the model waits for a second read to be under way
            self.second_get_started.wait(GATE_S)
        self.add("start", name, label)
        try:
            yield
        finally:
            self.add("end", name, label)


class SlowClient:
    """A boto3 client whose every request takes DELAY_S longer, logged with its key.

    `faults`: (operation, key) -> error code to answer instead. BatchGetItem is held until a
    GetObject is under way (or GATE_S passed), the model until a second one is, and the
    read of `Log.hold_get_of` until a record write started: whether work overlaps is
    decided by the order of events, not by how fast threads start (a flow that does not
    overlap them waits GATE_S and fails the order asserted).
    """

    OPERATIONS = ("get_object", "put_object", "head_object", "delete_object",
                  "batch_get_item", "put_item")

    def __init__(self, inner: Any, log: Log, faults: dict[tuple[str, str], str]) -> None:
        self.inner = inner
        self.log = log
        self.faults = faults

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        return self._slow(name, attr) if name in self.OPERATIONS else attr

    def _slow(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def slow(**kwargs: Any) -> Any:
            from botocore.exceptions import ClientError

            key = kwargs.get("Key")
            what = key if isinstance(key, str) else kwargs.get("Item", {}).get(
                "image", {}).get("S", "")
            if name == "get_object" and what == self.log.hold_get_of:
                self.log.put_started.wait(GATE_S)
            self.log.add("start", name, what)
            if name == "get_object":
                if self.log.get_started.is_set():
                    self.log.second_get_started.set()
                self.log.get_started.set()
            if name == "put_item":
                self.log.put_started.set()
                self._gather_puts()
            if name == "batch_get_item":
                self.log.get_started.wait(GATE_S)
            time.sleep(DELAY_S)
            try:
                code = self.faults.get((name, what))
                if code:
                    raise ClientError({"Error": {"Code": code, "Message": code},
                                       "ResponseMetadata": {"HTTPStatusCode": 503}}, name)
                return call(**kwargs)
            finally:
                self.log.add("end", name, what)

        return slow

    def _gather_puts(self) -> None:
        log = self.log
        with log.puts:
            log.puts_in_flight += 1
            log.most_puts_in_flight = max(log.most_puts_in_flight, log.puts_in_flight)
            log.puts.notify_all()
            log.puts.wait_for(lambda: log.puts_in_flight >= log.put_quorum, GATE_S)
        with log.puts:
            log.puts_in_flight -= 1


@pytest.fixture
def slow(aws: Clients, classifier: Classifier,
         monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[ClassificationService, Log]]:
    def make(faults: dict[tuple[str, str], str] | None = None
             ) -> tuple[ClassificationService, Log]:
        log = Log()
        monkeypatch.setattr(classifier, "spans", log)
        clients = Clients(s3=SlowClient(aws.s3, log, faults or {}),
                          dynamodb=SlowClient(aws.dynamodb, log, faults or {}))
        service = build_service(Settings(table_name=TABLE), clients=clients,
                                classifier=classifier, spans=log)
        return service, log

    return make


def upload(aws: Clients, name: str, data: bytes) -> ObjectRef:
    key = f"incoming/{name}"
    etag = aws.s3.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"].strip('"')
    return ObjectRef(bucket=BUCKET, key=key, etag=etag, size=len(data))


def test_reads_and_writes_overlap_the_cpu_work_and_all_end_before_the_return(
        aws: Clients, slow: Callable[..., tuple[ClassificationService, Log]]) -> None:
    refs = [upload(aws, name, sample(name)) for name in PHOTOS]
    service, log = slow()
    log.hold_get_of = refs[-1].key
    outcomes = service.process(refs)
    assert [o.status for o in outcomes] == ["classified"] * len(refs)
    events = log.events

    # The first object's read went out while the records were being read.
    first_get = log.index("start", "get_object", refs[0].key)
    assert first_get < log.index("end", "batch_get_item")
    # Reads ran ahead: a second object was being read before the model's first run ended.
    assert log.index("start", "get_object", refs[1].key) < log.index(
        "end", "inference", next(e[2] for e in events if e[:2] == ("end", "inference")))
    # Writes of earlier images were under way while a later image was read and decoded.
    first_put = min(i for i, e in enumerate(events) if e[:2] == ("start", "put_item"))
    assert first_put < log.index("start", "get_object", refs[-1].key)
    # Nothing left in flight when process returned.
    assert log.open_spans() == []
    assert [e for e in events if e[1] == "put_object"], "documents written"
    for ref in refs:
        assert aws.dynamodb.get_item(TableName=TABLE, Key={
            "image": {"S": ref.uri}, "model": {"S": MODEL}})["Item"]["status"]["S"] == \
            "classified"


def test_faults_land_on_their_own_images_whether_read_early_or_not(
        aws: Clients, slow: Callable[..., tuple[ClassificationService, Log]]) -> None:
    refs = [upload(aws, name, sample(name)) for name in PHOTOS[:4]]
    refs.append(upload(aws, "notes.txt", b"not a photo"))
    faults = {
        ("get_object", refs[0].key): "SlowDown",  # the read that goes out early
        ("get_object", refs[2].key): "SlowDown",
        ("put_item", refs[3].uri): "ProvisionedThroughputExceededException",
    }
    service, log = slow(faults)
    outcomes = service.process(refs)
    assert [o.status for o in outcomes] == ["failed", "classified", "failed", "failed",
                                            "rejected"]
    assert "reading" in outcomes[0].detail and "reading" in outcomes[2].detail
    assert log.open_spans() == []
    # The retry (SQS's redelivery) classifies what failed and skips what is done.
    service, log = slow()
    assert [o.status for o in service.process(refs)] == ["classified", "skipped",
                                                         "classified", "classified",
                                                         "skipped"]


def test_an_early_read_of_an_object_already_done_is_dropped_and_joined(
        aws: Clients, slow: Callable[..., tuple[ClassificationService, Log]]) -> None:
    refs = [upload(aws, name, sample(name)) for name in PHOTOS[:2]]
    service, _ = slow()
    service.process(refs[:1])
    service, log = slow()
    outcomes = service.process(refs)
    assert [o.status for o in outcomes] == ["skipped", "classified"]
    assert log.index("start", "get_object", refs[0].key) < log.index("end", "batch_get_item")
    assert log.open_spans() == [], "the dropped read ended before process returned"
    assert not [e for e in log.events if e[1] == "put_item" and e[2] == refs[0].uri]


def test_the_writes_of_a_call_do_not_queue_behind_each_other(
        aws: Clients, slow: Callable[..., tuple[ClassificationService, Log]]) -> None:
    """Small photos come out of the model faster than one writer per read can store them:
    every image's record write can be under way at once (each write here waits until all
    are), so none waits for a free writer after the model is done."""
    refs = [upload(aws, f"{i}-{name}", sample(name)) for i in range(2) for name in PHOTOS]
    service, log = slow()
    log.put_quorum = len(refs)
    outcomes = service.process(refs)
    assert [o.status for o in outcomes] == ["classified"] * len(refs)
    assert log.most_puts_in_flight == len(refs)
