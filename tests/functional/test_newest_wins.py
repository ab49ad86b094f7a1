"""Newest wins: random interleavings of overwrites through the real service, against moto.

Each event is handled by its own `ClassificationService` (as concurrent Lambda invocations
are, each in its own container), over S3 and DynamoDB adapters whose every call first waits
for its turn. A scheduler lets exactly one thing happen at a time - an upload, the delivery
of an event, or the next S3/DynamoDB call of one invocation - and hypothesis chooses which,
so every interleaving at the granularity of those calls can be reached and shrunk. Failed
invocations are redelivered, as SQS would. At the end, every key's record and output
document must describe the object that is at the key now.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.aws import Clients, S3ObjectStore
from pipeline.classifier import Classifier, create_session
from pipeline.ingest import process_messages
from pipeline.keys import output_key_for
from pipeline.manifest import ModelManifest, load_manifest
from pipeline.service import ClassificationService
from pipeline.settings import Settings
from pipeline.table import PredictionsTable
from tests.functional.conftest import BUCKET, TABLE, s3_event
from tests.tiny_models import EFFICIENTNET_LITE0, make_tiny_model

KEYS = 3
VERSIONS = 3  # uploads per key: the first, then two overwrites
STEP_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelManifest, Any]:
    model = make_tiny_model(tmp_path_factory.mktemp("tiny"), EFFICIENTNET_LITE0)
    manifest = load_manifest(model.manifest_path)
    return manifest, create_session(manifest, intra_op_threads=1)


def _image(n: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), ((n * 53) % 256, (n * 97) % 256, (n * 31) % 256)).save(buf, "PNG")
    return buf.getvalue()


class Scheduler:
    """Lets one invocation at a time make its next S3/DynamoDB call, when told to."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running: set[int] = set()  # computing between two calls
        self.waiting: dict[int, str] = {}  # actor -> the call it waits to make
        self.granted: int | None = None

    def gate(self, actor: int, call: str) -> None:
        with self.cond:
            self.running.discard(actor)
            self.waiting[actor] = call
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.granted == actor, STEP_TIMEOUT_S):
                raise AssertionError(f"actor {actor} never got its turn for {call}")
            self.granted = None
            del self.waiting[actor]
            self.running.add(actor)

    def start(self, actor: int) -> None:
        with self.cond:
            self.running.add(actor)

    def finish(self, actor: int) -> None:
        with self.cond:
            self.running.discard(actor)
            self.cond.notify_all()

    def settle(self) -> list[int]:
        """Wait until every invocation waits for a call or has finished; who waits."""
        with self.cond:
            if not self.cond.wait_for(lambda: not self.running and self.granted is None,
                                      STEP_TIMEOUT_S):
                raise AssertionError(f"invocations {sorted(self.running)} never settled")
            return sorted(self.waiting)

    def grant(self, actor: int) -> None:
        with self.cond:
            self.granted = actor
            self.running.add(actor)  # until it reaches its next call or finishes
            self.cond.notify_all()


class Gated:
    """Wraps an adapter: every public call waits for the scheduler's go."""

    def __init__(self, inner: Any, scheduler: Scheduler, actor: int) -> None:
        self._inner, self._scheduler, self._actor = inner, scheduler, actor

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._scheduler.gate(self._actor, name)
            return attr(*args, **kwargs)

        return call


@dataclass
class Race:
    clients: Clients
    manifest: ModelManifest
    session: Any
    prefix: str
    with_sequencers: bool
    scheduler: Scheduler = field(default_factory=Scheduler)
    current: dict[str, str] = field(default_factory=dict)  # key -> ETag uploaded last
    pending: list[str] = field(default_factory=list)  # event bodies not delivered yet
    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    interleavings: int = 0

    def upload(self, key: str, data: bytes, copies: int) -> None:
        resp = self.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        etag = resp["ETag"].strip('"')
        self.current[key] = etag
        obj: dict[str, Any] = {"key": key, "etag": etag, "size": len(data)}
        if self.with_sequencers:
            obj["sequencer"] = f"{next(self.seq) + 1:016X}"
        self.pending.extend([s3_event(obj)] * copies)

    def deliver(self, body: str, actor: int) -> None:
        classifier = Classifier(self.manifest, self.session, batch_size=4, decode_workers=1,
                                fetch_workers=1)
        service = ClassificationService(
            classifier,
            Gated(S3ObjectStore(self.clients.s3), self.scheduler, actor),  # type: ignore[arg-type]
            Gated(PredictionsTable(self.clients.dynamodb, TABLE), self.scheduler, actor),  # type: ignore[arg-type]
            Settings(table_name=TABLE, fetch_workers=1),
        )

        def run() -> None:
            try:
                report = process_messages(service, [(f"m{actor}", body)])
                if report.failed_message_ids:
                    self.pending.append(body)  # SQS redelivers it
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.errors.append(e)
            finally:
                classifier.close()
                self.scheduler.finish(actor)

        self.scheduler.start(actor)
        thread = threading.Thread(target=run, name=f"invocation-{actor}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def run(self, uploads: list[tuple[str, bytes, int]], choose: Callable[[int], int]) -> None:
        actors = itertools.count()
        while True:
            waiting = self.scheduler.settle()
            options: list[Callable[[], None]] = []
            if uploads:
                options.append(lambda: self.upload(*uploads.pop(0)))
            for i in range(len(self.pending)):
                options.append(lambda i=i: self.deliver(self.pending.pop(i), next(actors)))
            for actor in waiting:
                options.append(lambda actor=actor: self.scheduler.grant(actor))
            if not options:
                break
            options[choose(len(options))]()
            self.interleavings += 1
        for thread in self.threads:
            thread.join(STEP_TIMEOUT_S)
        assert not self.errors, self.errors

    def overtake(self, key: str, data: bytes) -> None:
        """While invocation 0 waits: upload a new version of `key`, run its invocation (1)
        to the end, then let 0 finish; then check."""
        self.upload(key, data, copies=1)
        self.deliver(self.pending.pop(), 1)
        while 1 in self.scheduler.settle():
            self.scheduler.grant(1)
        while self.scheduler.settle():
            self.scheduler.grant(0)
        for thread in self.threads:
            thread.join(STEP_TIMEOUT_S)
        self.check()

    def check(self) -> None:
        from boto3.dynamodb.types import TypeDeserializer

        de = TypeDeserializer()
        model = self.manifest.model_id
        for key, etag in self.current.items():
            head = self.clients.s3.head_object(Bucket=BUCKET, Key=key)
            assert head["ETag"].strip('"') == etag
            item = self.clients.dynamodb.get_item(
                TableName=TABLE, ConsistentRead=True,
                Key={"image": {"S": f"s3://{BUCKET}/{key}"}, "model": {"S": model}})["Item"]
            record = {k: de.deserialize(v) for k, v in item.items()}
            assert record["etag"] == etag, f"{key}: the record describes an older object"
            doc_key = output_key_for(key, model, "predictions/")
            listed = self.clients.s3.list_objects_v2(Bucket=BUCKET, Prefix=doc_key)
            docs = [o["Key"] for o in listed.get("Contents", [])]
            if record["status"] == "rejected":
                assert docs == [], f"{key}: a rejected object kept an old document"
                continue
            assert record["status"] == "classified"
            assert docs == [doc_key]
            body = self.clients.s3.get_object(Bucket=BUCKET, Key=doc_key)["Body"].read()
            doc = json.loads(body)
            assert doc["etag"] == etag, f"{key}: the document describes an older object"
            assert doc["processed_at"] == record["processed_at"]


@pytest.mark.parametrize("with_sequencers", [False, True], ids=["no-sequencer", "sequencer"])
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_the_newest_object_wins_record_and_document(
    aws: Clients, tiny: tuple[ModelManifest, Any], with_sequencers: bool, data: st.DataObject,
) -> None:
    manifest, session = tiny
    prefix = f"incoming/{uuid.uuid4().hex[:8]}/"
    uploads = []
    colour = itertools.count()
    for version in range(VERSIONS):
        for k in range(KEYS):
            not_image = data.draw(st.integers(0, 4), label=f"k{k}v{version} kind") == 0
            content = b"this is not an image\n" + bytes([k, version]) if not_image else (
                _image(next(colour)))
            copies = data.draw(st.integers(1, 2), label=f"k{k}v{version} deliveries")
            uploads.append((f"{prefix}k{k}.png", content, copies))
    # Uploads stay in order per key, but keys interleave freely with everything else.
    order = data.draw(st.permutations(range(len(uploads))), label="upload order")
    per_key: dict[str, list[int]] = {}
    for i in order:
        per_key.setdefault(uploads[i][0], []).append(i)
    for indices in per_key.values():
        indices.sort()
    it = {key: iter(ix) for key, ix in per_key.items()}
    ordered = [uploads[next(it[uploads[i][0]])] for i in order]

    race = Race(aws, manifest, session, prefix, with_sequencers)
    race.run(ordered, lambda n: data.draw(st.integers(0, n - 1)) if n > 1 else 0)
    race.check()


def test_an_invocation_that_read_the_old_object_does_not_overwrite_the_new_one(
    aws: Clients, tiny: tuple[ModelManifest, Any],
) -> None:
    """The issue's case, spelled out: the older object's invocation finishes last."""
    manifest, session = tiny
    race = Race(aws, manifest, session, "incoming/", with_sequencers=False)
    key = "incoming/slow.png"
    race.upload(key, _image(1), copies=1)
    race.deliver(race.pending.pop(), 0)
    # The old invocation reads its record and the old object, then waits before writing.
    for _ in range(2):
        race.scheduler.settle()
        race.scheduler.grant(0)
    assert race.scheduler.settle() == [0]
    race.overtake(key, _image(2))


def test_a_document_written_from_a_record_read_too_early_is_taken_back(
    aws: Clients, tiny: tuple[ModelManifest, Any],
) -> None:
    """A classified object's invocation is about to write its document when the object is
    overwritten by one that is rejected. The rejected one's invocation writes its record and
    finds no document to remove; then the first writes its document, from a record that is
    no longer stored. It must notice and take the document back."""
    manifest, session = tiny
    race = Race(aws, manifest, session, "incoming/", with_sequencers=False)
    key = "incoming/replaced.png"
    race.upload(key, _image(3), copies=1)
    race.deliver(race.pending.pop(), 0)
    while race.scheduler.settle() != [0] or race.scheduler.waiting[0] != "put_json":
        race.scheduler.grant(0)
    race.overtake(key, b"this is not an image\n")
