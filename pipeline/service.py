"""The one core call both entry points make: object references in, records out.

`ClassificationService.process(refs)`:

1. collapse duplicates in the batch (same object and ETag; for one key the newest event);
2. read the existing records for (image, model) in one BatchGetItem and skip what is
   already done (same ETag) or newer (sequencer) - no inference, no write;
3. fetch (conditional on ETag) and decode in the classifier's thread pool, batched
   inference; the first object's read goes out with step 2's (nothing else is under way
   then), the others while earlier images decode and the model runs;
4. write the DynamoDB item with a condition on what was read in step 2 (the newest object
   wins: see `_write`), then make the JSON document follow the record with conditional S3
   writes (`pipeline.documents`), so a crash between the two writes, a redelivery or a
   concurrent, slower writer all converge on exactly one output and one record, both
   describing the object's current version. The writes of each image start as soon as
   its result is out, while later images decode; all are joined before `process`
   returns (Lambda freezes the process after the handler returns).

Each reference gets an `Outcome`. Transient faults become `failed` outcomes (the caller
turns them into batch item failures); they never become `rejected` records.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pipeline.classifier import Classifier, ImageTimings, ItemResult
from pipeline.documents import DocumentStore, record_token
from pipeline.errors import (
    GoneError,
    ImgpipeError,
    PermanentError,
    SupersededError,
    TransientError,
)
from pipeline.events import ObjectRef
from pipeline.keys import batch_output_key, compare_sequencers
from pipeline.observe import NO_SPANS, Spans
from pipeline.outputs import OutputDocuments, output_documents_for
from pipeline.records import PredictionRecord, classified_record, gone_record, rejected_record
from pipeline.settings import Settings

__all__ = [
    "ClassificationService",
    "Outcome",
    "OutcomeStatus",
    "ObjectStore",
    "ResultSink",
    "FetchedLike",
]

OutcomeStatus = Literal[
    "classified",  # new record written
    "rejected",  # bad image: rejected record written
    "gone",  # deleted before it was read: gone record written (or one already there)
    "skipped",  # already done for this ETag and model, or a newer result stands
    "superseded",  # overwritten since the event: the newer object's event handles it
    "failed",  # transient: retry (batch item failure)
]

log = logging.getLogger("imgpipe")

# Threads writing records and documents. An image's writes are three round trips one after
# the other (~40 ms on AWS), and waiting is all they do: with 4, web-size photos (~10 ms of
# CPU each) queued their writes behind the model and the call waited for the queue at its
# end. 16 keep up with 400 images/s and stay within the clients' 32 connections with the
# reads (IMGPIPE_FETCH_WORKERS).
WRITERS = 16


class FetchedLike(Protocol):
    @property
    def data(self) -> bytes: ...

    @property
    def etag(self) -> str | None: ...

    @property
    def version_id(self) -> str | None: ...


class ObjectStore(DocumentStore, Protocol):
    def get(self, ref: ObjectRef, max_bytes: int) -> FetchedLike: ...

    def put_lines(self, bucket: str, key: str, documents: Sequence[Mapping[str, Any]]) -> None:
        ...

    def current_etag(self, bucket: str, key: str) -> str | None: ...


class ResultSink(Protocol):
    def get_many(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], PredictionRecord]: ...

    def put(self, record: PredictionRecord, expected: PredictionRecord | None) -> bool: ...

    def token(self, image: str, model: str) -> str | None: ...


@dataclass(frozen=True)
class Outcome:
    ref: ObjectRef
    status: OutcomeStatus
    detail: str = ""
    record: PredictionRecord | None = None


class ClassificationService:
    def __init__(
        self,
        classifier: Classifier,
        store: ObjectStore,
        sink: ResultSink,
        settings: Settings,
        *,
        clock: Callable[[], datetime] | None = None,
        logger: Any = None,
        spans: Spans = NO_SPANS,
        documents: OutputDocuments | None = None,
    ) -> None:
        self.classifier = classifier
        self.store = store
        self.sink = sink
        self.settings = settings
        self.clock = clock
        self.log = logger or log
        self.spans = spans  # X-Ray subsegments around each fetch and each image's writes
        # IMGPIPE_OUTPUT_DOCUMENTS, chosen once (the factory passes it)
        self.documents = documents or output_documents_for(settings, store, sink)
        self._writer_pool: ThreadPoolExecutor | None = None
        # The function's timeout: configured, or learnt from the first invocation's context
        # (at its start, the remaining time is the timeout, in whole seconds on Lambda).
        self._timeout_ms: int | None = settings.function_timeout_s * 1000 or None
        self._writers_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.classifier.model_id

    # ---- the core call -----------------------------------------------------------------

    def process(
        self,
        refs: Sequence[ObjectRef],
        *,
        overwrite: bool = False,
        remaining_ms: Callable[[], int] | None = None,
    ) -> list[Outcome]:
        """Classify `refs` and write their records; one `Outcome` per distinct ref.

        Raises `ConfigError` when the function's timeout leaves no working time after the
        margin (a setting to change, not something a retry would mend).
        """
        if remaining_ms is not None and self._timeout_ms is None:
            timeout_ms = -(-remaining_ms() // 1000) * 1000
            self.settings.check_timeout(timeout_ms)
            self._timeout_ms = timeout_ms
        if not refs:
            return []
        unique = list(dict.fromkeys(refs))
        superseded_in_batch = _older_duplicates(unique)
        # The first object's read goes out with the records' read instead of after it: the
        # CPUs have nothing to do until the first image arrives. At most this one read is
        # wasted (the object turns out done); it is joined before returning, used or not.
        first = next((r for r in unique if r not in superseded_in_batch), None)
        early = None
        if first is not None and self.settings.fetch_workers > 1:  # 1: a request at a time
            early = (first, self._writers().submit(self._timed_fetch, first, remaining_ms))
        try:
            return self._process(unique, superseded_in_batch, overwrite, remaining_ms, early)
        finally:
            if early is not None:
                wait([early[1]])

    def _timed_fetch(self, ref: ObjectRef, remaining_ms: Callable[[], int] | None
                     ) -> tuple[FetchedLike, float]:
        started = time.perf_counter()
        return self._fetch(ref, remaining_ms), (time.perf_counter() - started) * 1000

    def _fetch(self, ref: ObjectRef, remaining_ms: Callable[[], int] | None) -> FetchedLike:
        if remaining_ms is not None and remaining_ms() < self.settings.margin_ms(
                self._timeout_ms):
            raise TransientError("not started: the invocation is close to its timeout")
        with self.spans.span("fetch"):
            return self.store.get(ref, self.settings.max_object_bytes)

    def _process(
        self,
        unique: list[ObjectRef],
        superseded_in_batch: dict[ObjectRef, str],
        overwrite: bool,
        remaining_ms: Callable[[], int] | None,
        early: tuple[ObjectRef, Future[tuple[FetchedLike, float]]] | None,
    ) -> list[Outcome]:
        model = self.model_id
        try:
            existing = self.sink.get_many((r.uri, model) for r in unique)
        except TransientError as e:
            return [Outcome(r, "failed", str(e)) for r in unique]

        results: dict[ObjectRef, Outcome] = {}
        todo: list[ObjectRef] = []
        done_checks: dict[ObjectRef, Future[Outcome]] = {}
        for ref in unique:
            if ref in superseded_in_batch:
                results[ref] = Outcome(ref, "skipped", superseded_in_batch[ref])
                continue
            stored = existing.get((ref.uri, model))
            reason = None if overwrite else _already_done(ref, stored)
            if not reason:
                todo.append(ref)
            elif stored is not None and ref.etag and stored.etag == ref.etag:
                done_checks[ref] = self._writers().submit(self._skip_done, ref, reason, stored)
            else:
                results[ref] = Outcome(ref, "skipped", reason)

        fetched: dict[int, FetchedLike] = {}

        def loader(i: int, ref: ObjectRef) -> Callable[[], bytes]:
            def load() -> bytes:
                if early is not None and early[0] is ref:
                    obj = early[1].result()[0]  # already under way (see `process`)
                else:
                    obj = self._fetch(ref, remaining_ms)
                fetched[i] = obj
                return obj.data

            return load

        # The two writes of each image (S3, then DynamoDB) are round trips: run them in a
        # pool so they overlap with each other and with the next images' inference.
        writes: dict[ObjectRef, Future[Outcome]] = {}
        to_batch: list[tuple[ObjectRef, ObjectRef, ItemResult[int]]] = []
        for result in self.classifier.classify_many(
            (i, loader(i, ref)) for i, ref in enumerate(todo)
        ):
            ref = todo[result.key]
            if early is not None and ref is early[0] and result.timings is not None:
                # its read ran before the classifier asked for it: the read's own time
                result = replace(result, timings=replace(
                    result.timings, fetch_ms=early[1].result()[1]))
            obj = fetched.get(result.key)
            if obj is not None:
                ref = _with_object_facts(ref, obj)
            if self.documents.collects and result.prediction is not None:
                to_batch.append((todo[result.key], ref, result))
                continue
            writes[todo[result.key]] = self._writers().submit(
                self._finish, ref, result.prediction, result.error, result.nbytes,
                existing.get((ref.uri, model)), overwrite, result.timings,
            )
        if to_batch:
            writes |= self._write_batch(to_batch, existing, overwrite)
        for original, future in (writes | done_checks).items():
            results[original] = future.result()
        return [results[r] for r in unique]

    def _write_batch(
        self,
        results: list[tuple[ObjectRef, ObjectRef, ItemResult[int]]],
        existing: dict[tuple[str, str], PredictionRecord],
        overwrite: bool,
    ) -> dict[ObjectRef, Future[Outcome]]:
        """IMGPIPE_OUTPUT_DOCUMENTS=batch: the invocation's classified images as one JSON
        Lines file per output bucket, written before their records, so a record never
        points at a file that is not there (a crash in between leaves a file no record
        names, and the redelivery writes another)."""
        model = self.model_id
        now = self.clock() if self.clock else datetime.now(UTC)
        moment = now.strftime("%Y%m%dT%H%M%S%fZ")
        key = batch_output_key(model, self.settings.output_prefix, moment, uuid.uuid4().hex[:12])
        by_bucket: dict[str, list[tuple[ObjectRef, ObjectRef, PredictionRecord]]] = {}
        for original, ref, result in results:
            bucket = self.settings.output_bucket or ref.bucket
            lines = by_bucket.setdefault(bucket, [])
            assert result.prediction is not None
            record = classified_record(ref, model, result.prediction, key, now,
                                       timings=result.timings, output_line=len(lines) + 1)
            lines.append((original, ref, record))
        futures: dict[ObjectRef, Future[Outcome]] = {}
        for bucket, lines in by_bucket.items():
            try:
                with self.spans.span("write"):
                    self.store.put_lines(bucket, key, [r.to_document() for _, _, r in lines])
            except TransientError as e:
                for original, ref, _ in lines:
                    futures[original] = _done(Outcome(ref, "failed", str(e)))
                continue
            for original, ref, record in lines:
                futures[original] = self._writers().submit(
                    self._write, record, ref, existing.get((ref.uri, model)), overwrite)
        return futures

    def _writer_count(self) -> int:
        """WRITERS; one when IMGPIPE_FETCH_WORKERS=1 asks for one request at a time (the
        exhaustive interleavings of tests/functional/test_newest_wins.py rely on it)."""
        workers = self.settings.fetch_workers
        return 1 if workers == 1 else max(workers, WRITERS)

    def _writers(self) -> ThreadPoolExecutor:
        with self._writers_lock:
            if self._writer_pool is None:
                self._writer_pool = ThreadPoolExecutor(
                    max_workers=self._writer_count(),
                    thread_name_prefix="imgpipe-write")
            return self._writer_pool

    def _finish(
        self,
        ref: ObjectRef,
        prediction: Any,
        error: BaseException | None,
        nbytes: int | None,
        expected: PredictionRecord | None,
        overwrite: bool,
        timings: ImageTimings | None = None,
    ) -> Outcome:
        model = self.model_id
        now = self.clock() if self.clock else None
        if isinstance(error, SupersededError):
            return Outcome(ref, "superseded", str(error))
        if isinstance(error, GoneError):
            if expected is not None:
                return Outcome(ref, "gone", "deleted; the existing record stays", expected)
            record = gone_record(ref, model, now)
        elif isinstance(error, PermanentError):
            record = rejected_record(ref, model, str(error), now, nbytes=nbytes)
        elif error is not None:
            detail = str(error) if isinstance(error, ImgpipeError) else (
                f"{type(error).__name__}: {error}")
            return Outcome(ref, "failed", detail)
        else:
            out_key = self.documents.output_key(ref, model)
            record = classified_record(ref, model, prediction, out_key, now, timings=timings)
        return self._write(record, ref, expected, overwrite)

    def _write(
        self,
        record: PredictionRecord,
        ref: ObjectRef,
        expected: PredictionRecord | None,
        overwrite: bool,
    ) -> Outcome:
        """Record first (the conditional put decides who won), then its document.

        `expected` is the record read before the object was read by ETag, so a first put
        that finds it unchanged is the current object's. When someone wrote in between,
        decide again against what is there now: the same object's result stands; an
        ordered sequencer decides; otherwise the object's current ETag (HEAD) does.
        """
        with self.spans.span("write"):
            return self._write_record(record, ref, expected, overwrite)

    def _write_record(
        self,
        record: PredictionRecord,
        ref: ObjectRef,
        expected: PredictionRecord | None,
        overwrite: bool,
    ) -> Outcome:
        try:
            for _attempt in range(3):
                if self.sink.put(record, expected):
                    self.documents.follow(ref, record, just_written=True)
                    return Outcome(ref, record.status, record.error or "", record)
                expected = self._read_record(record.image, record.model)
                if expected is not None and record_token(expected) == record_token(record):
                    # Our own put, applied although its reply was lost (a 5xx or a read
                    # timeout, then botocore's retry lost to it): this writer won, so it
                    # finishes the document as any winner does.
                    self.documents.follow(ref, expected)
                    return Outcome(ref, expected.status, expected.error or "", expected)
                reason = None if overwrite else _already_done(ref, expected)
                if reason:
                    if expected is not None and ref.etag and expected.etag == ref.etag:
                        # Another writer stored this object's record first and may stop
                        # before its document: make sure the document is there.
                        return self._skip_done(ref, reason, expected)
                    return Outcome(ref, "skipped", reason, expected)
                newer = self._newer_stands(ref, expected)
                if newer:
                    return Outcome(ref, "superseded", newer, expected)
            return Outcome(ref, "failed", "the record kept changing under concurrent writers")
        except TransientError as e:
            return Outcome(ref, "failed", str(e))
        except ImgpipeError as e:  # a put never raises Gone/Superseded; be safe anyway
            return Outcome(ref, "failed", str(e))

    def _newer_stands(self, ref: ObjectRef, existing: PredictionRecord | None) -> str | None:
        """Why the stored record (of another object version) must stay, or None."""
        if existing is None:
            return None
        order = compare_sequencers(ref.sequencer, existing.sequencer)
        if order is not None:
            return None if order >= 0 else "a newer event's result is already stored"
        current = self.store.current_etag(ref.bucket, ref.key)
        if current is None:
            return "the object was deleted since it was read; the stored record stays"
        if ref.etag and current == ref.etag:
            return None
        return "the object was overwritten since it was read; the newer object's record stands"

    def _read_record(self, image: str, model: str) -> PredictionRecord | None:
        return self.sink.get_many([(image, model)]).get((image, model))

    def _skip_done(self, ref: ObjectRef, reason: str, existing: PredictionRecord) -> Outcome:
        """Already done for this object: no inference, but make sure its document is there
        (a writer may have stopped between the record and the document)."""
        try:
            self.documents.ensure(ref, existing)
        except ImgpipeError as e:
            return Outcome(ref, "failed", str(e))
        return Outcome(ref, "skipped", reason, existing)


def _done(outcome: Outcome) -> Future[Outcome]:
    future: Future[Outcome] = Future()
    future.set_result(outcome)
    return future


def _older_duplicates(refs: Sequence[ObjectRef]) -> dict[ObjectRef, str]:
    """Events in one batch that another event for the same key makes pointless.

    The same object (key and ETag) twice: the later one is dropped. Two versions with
    known sequencers: the older is dropped. Two versions without sequencers are both kept:
    the conditional read (IfMatch) lets only the current one through.
    """
    dropped: dict[ObjectRef, str] = {}
    by_key: dict[str, list[ObjectRef]] = {}
    for ref in refs:
        by_key.setdefault(ref.uri, []).append(ref)
    for group in by_key.values():
        for i, ref in enumerate(group):
            for other in group[:i] + group[i + 1:]:
                if other in dropped:
                    continue
                order = compare_sequencers(ref.sequencer, other.sequencer)
                if order is not None and order < 0:
                    dropped[ref] = "a newer event for this key is in the same batch"
                    break
                same_object = ref.etag and ref.etag == other.etag and order in (None, 0)
                if same_object and group.index(other) < i:
                    dropped[ref] = "the same object appears earlier in the batch"
                    break
    return dropped


def _already_done(ref: ObjectRef, existing: PredictionRecord | None) -> str | None:
    """Why `ref` needs no work given the stored record, or None if it does."""
    if existing is None:
        return None
    if ref.etag and existing.etag == ref.etag and existing.status != "gone":
        return f"already {existing.status} for this ETag and model"
    order = compare_sequencers(ref.sequencer, existing.sequencer)
    if order is not None and order < 0:
        return "a newer event's result is already stored"
    if order == 0 and existing.status != "gone":
        return f"already {existing.status} for this event"
    return None


def _with_object_facts(ref: ObjectRef, obj: FetchedLike) -> ObjectRef:
    """Fill in what the read told us (events from listings or EventBridge may lack some)."""
    from dataclasses import replace

    changes: dict[str, Any] = {}
    if obj.etag and not ref.etag:
        changes["etag"] = obj.etag
    if obj.version_id and not ref.version_id:
        changes["version_id"] = obj.version_id
    if ref.size is None:
        changes["size"] = len(obj.data)
    return replace(ref, **changes) if changes else ref


def deadline_from(context: Any) -> Callable[[], int] | None:
    """`remaining_ms` for a Lambda context (None outside Lambda)."""
    fn = getattr(context, "get_remaining_time_in_millis", None)
    return fn if callable(fn) else None

