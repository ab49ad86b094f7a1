"""Ingest: an SQS batch of S3 notifications through the same core as the backfill.

The adapter between SQS and `ClassificationService.process`: it reads each message body
into object references (`pipeline.events`), refuses what the pipeline must not touch,
hands every reference of the batch to the core as one batched classification, and maps
the outcomes back to messages. The response lists exactly the message IDs with an object
that hit a transient fault, so SQS redelivers only those (ReportBatchItemFailures).

A body that will never parse, or an event for another bucket than the pipeline's, is
reported failed too: after maxReceiveCount it rests in the DLQ, body intact, for a person
to look at, and nothing is recorded for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import PermanentError
from pipeline.events import ObjectRef, ParsedMessage, parse_message_body

if TYPE_CHECKING:
    from pipeline.service import ClassificationService, Outcome

__all__ = ["BatchReport", "foreign_bucket", "process_messages"]


@dataclass
class BatchReport:
    """What became of an SQS batch: the failed message IDs and per-object outcomes."""

    failed_message_ids: list[str] = field(default_factory=list)
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (msg id, what, why)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        return counts

    def response(self) -> dict[str, list[dict[str, str]]]:
        return {"batchItemFailures": [{"itemIdentifier": m} for m in self.failed_message_ids]}


def process_messages(
    service: ClassificationService,
    messages: Sequence[tuple[str, str]],
    remaining_ms: Callable[[], int] | None = None,
    *,
    logger: Any = None,
) -> BatchReport:
    """Process (message_id, body) pairs as one batched classification."""
    log = logger or service.log
    report = BatchReport()
    refs_by_msg = _read_messages(messages, service.settings.bucket, report, log)
    all_refs = [r for refs in refs_by_msg.values() for r in refs]
    outcomes = service.process(all_refs, remaining_ms=remaining_ms)
    # `process` answers in the order of the distinct refs it was given.
    by_ref = dict(zip(dict.fromkeys(all_refs), outcomes, strict=True))
    for message_id, refs in refs_by_msg.items():
        failed = False
        for ref in refs:
            outcome = by_ref[ref]
            report.outcomes.append((message_id, outcome))
            failed = failed or outcome.status == "failed"
            _log_outcome(log, service.model_id, message_id, outcome)
        if failed:
            report.failed_message_ids.append(message_id)
    return report


def _read_messages(messages: Sequence[tuple[str, str]], bucket: str, report: BatchReport,
                   log: Any) -> dict[str, list[ObjectRef]]:
    """The object references of each message that may go to the core; the others are
    reported failed (refused) in `report`, and skipped records noted there."""
    refs_by_msg: dict[str, list[ObjectRef]] = {}
    for message_id, body in messages:
        try:
            parsed: ParsedMessage = parse_message_body(body)
        except PermanentError as e:
            # A body that will never parse: report it so that after maxReceiveCount it
            # rests in the DLQ, body intact, for a person to look at.
            log.error("unreadable message", extra={"message_id": message_id,
                                                   "error": str(e)})
            report.failed_message_ids.append(message_id)
            continue
        foreign = foreign_bucket(parsed.refs, bucket)
        if foreign:
            # Another bucket's event: a misrouted notification. Refused like a body
            # that does not parse, so it rests in the DLQ for a person to look at,
            # and nothing is recorded for objects this pipeline does not own.
            log.error("message for another bucket", extra={
                "message_id": message_id, "error": foreign})
            report.failed_message_ids.append(message_id)
            continue
        for what, why in parsed.skipped:
            report.skipped.append((message_id, what, why))
            log.info("skipped", extra={"message_id": message_id, "object": what,
                                       "reason": why})
        refs_by_msg[message_id] = list(parsed.refs)
    return refs_by_msg


def foreign_bucket(refs: Sequence[ObjectRef], mine: str) -> str:
    """The sentence refusing events for a bucket other than the pipeline's, or ""."""
    others = sorted({r.bucket for r in refs if mine and r.bucket != mine})
    if not others:
        return ""
    return (f"the event names bucket {', '.join(others)}, but this pipeline reads only "
            f"{mine} (IMGPIPE_BUCKET): check which notifications target its queue")


def _log_outcome(log: Any, model: str, message_id: str | None, o: Outcome) -> None:
    extra: dict[str, Any] = {"object_key": o.ref.key, "bucket": o.ref.bucket,
                             "status": o.status, "model": model}
    if message_id:
        extra["message_id"] = message_id
    if o.detail:
        extra["detail"] = o.detail
    if o.record is not None and o.record.label:
        extra["label"] = o.record.label
        extra["score"] = o.record.score
    level = logging.WARNING if o.status in ("failed", "rejected") else logging.INFO
    log.log(level, o.status, extra=extra)
