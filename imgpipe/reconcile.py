"""Reconciliation: do the bucket, the table, the output documents and the DLQ agree?

RELIABILITY.md "Load": at the end of any run, exactly one record per (object, model),
output documents equal classified records, and the DLQ accounted for. `reconcile` checks
that from the outside, with listings and a scan only (no object is read):

- every input object (zero-byte folder markers aside) has a record for the model, whose
  ETag is the object's current one (else the record is *stale*: a newer upload is not
  processed yet);
- every classified record has its output document, and every output document under
  `<output prefix><model>/` belongs to a classified record;
- the DLQ is empty.

Records whose object no longer exists are reported, not counted as problems: the object
was deleted after it was processed (or before, for a `gone` record).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import ImgpipeError
from pipeline.records import PredictionRecord

__all__ = ["ReconcileReport", "reconcile", "queue_depth", "reading", "scan_records"]

EXAMPLES = 5


@dataclass(frozen=True)
class ReconcileReport:
    bucket: str
    input_prefix: str
    output_prefix: str
    model: str
    objects: int  # input objects (folder markers aside)
    records: int  # records of the model for keys under the input prefix
    outputs: int  # output documents of keys under the input prefix
    statuses: Mapping[str, int] = field(default_factory=dict)
    missing_records: tuple[str, ...] = ()  # s3:// URIs of objects without a record
    stale_records: tuple[str, ...] = ()  # record ETag (or a `gone`) != the current object
    missing_outputs: tuple[str, ...] = ()  # output keys of classified records, not in S3
    orphaned_outputs: tuple[str, ...] = ()  # output keys without a classified record
    deleted_objects: tuple[str, ...] = ()  # records whose object is gone: information only
    other_records: int = 0  # records of the model elsewhere in the bucket (other prefixes)
    other_outputs: int = 0  # their output documents
    queue_depth: int | None = None  # visible + in flight in the ingest queue; None: not asked
    dlq_depth: int | None = None  # None: not asked

    @property
    def in_flight(self) -> bool:
        """Messages are still in the ingest queue, so missing records may yet appear."""
        return bool(self.queue_depth)

    @property
    def empty(self) -> bool:
        """Nothing to compare: no input objects and no records (a fresh or wiped stack)."""
        return self.objects == 0 and self.records == 0

    @property
    def ok(self) -> bool:
        return not (self.missing_records or self.stale_records or self.missing_outputs
                    or self.orphaned_outputs or self.dlq_depth)

    def problems(self) -> list[tuple[str, int, tuple[str, ...], str]]:
        """(kind, count, first examples, what it means) for each kind of problem found."""
        out: list[tuple[str, int, tuple[str, ...], str]] = []

        def add(kind: str, items: tuple[str, ...], meaning: str) -> None:
            if items:
                out.append((kind, len(items), items[:EXAMPLES], meaning))

        add("missing-record", self.missing_records,
            "object(s) without a record"
            + (f" ({self.queue_depth} message(s) still in the queue: check again when it "
               "drains)" if self.in_flight else ""))
        add("stale-record", self.stale_records,
            "record(s) older than the current object (a newer upload not processed yet)")
        add("missing-output", self.missing_outputs,
            "classified record(s) without their output document")
        add("orphaned-output", self.orphaned_outputs,
            "output document(s) without a classified record")
        if self.dlq_depth:
            out.append(("dlq", self.dlq_depth, (),
                        "message(s) in the DLQ (look at them, then `imgpipe redrive`)"))
        return out

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["statuses"] = dict(self.statuses)
        for name, value in doc.items():
            if isinstance(value, tuple):
                doc[name] = list(value)
        doc["in_flight"] = self.in_flight
        doc["empty"] = self.empty
        doc["ok"] = self.ok
        return doc


def reconcile(
    s3_client: Any,
    ddb_client: Any,
    *,
    bucket: str,
    input_prefix: str,
    output_prefix: str,
    table: str,
    model: str,
    queue_url: str | None = None,
    dlq_url: str | None = None,
    sqs_client: Any = None,
    output_bucket: str | None = None,
) -> ReconcileReport:
    """Compare the input listing, the table (scan) and the output listing; see the module."""
    if (queue_url or dlq_url) and sqs_client is None:
        raise ValueError("queue_url and dlq_url need an sqs_client")
    with reading(f"bucket {bucket!r}", "check --bucket, --endpoint-url and --region"):
        objects = {
            key: etag for key, etag, size in _list(s3_client, bucket, input_prefix)
            if not (size == 0 and key.endswith("/"))
        }
    with reading(f"table {table!r}", "check --table (or IMGPIPE_TABLE), --endpoint-url "
                  "and --region"):
        records = list(scan_records(ddb_client, table, f"s3://{bucket}/", model))
    out_bucket = output_bucket or bucket
    with reading(f"bucket {out_bucket!r}", "check IMGPIPE_OUTPUT_BUCKET"):
        outputs = {key for key, _, _ in _list(s3_client, out_bucket, f"{output_prefix}{model}/")}

    uri_prefix = f"s3://{bucket}/"
    by_key = {r.image[len(uri_prefix):]: r for r in records}
    here = [r for key, r in by_key.items() if key.startswith(input_prefix)]
    statuses: dict[str, int] = {}
    for r in here:
        statuses[r.status] = statuses.get(r.status, 0) + 1

    missing_records = sorted(f"{uri_prefix}{k}" for k in objects if k not in by_key)
    stale: list[str] = []
    deleted: list[str] = []
    for key, record in sorted(by_key.items()):
        if not key.startswith(input_prefix):
            continue  # another prefix of the bucket (a backfill elsewhere): not ours to judge
        if key not in objects:
            deleted.append(record.image)
        elif record.status == "gone" or (
            record.etag is not None and record.etag != objects[key]
        ):
            stale.append(record.image)

    expected_outputs = {r.output_key for r in records
                        if r.status == "classified" and r.output_key}
    # Documents count with the records they belong to (the input prefix or elsewhere); an
    # orphan counts where its key says it came from.
    outputs_here = {r.output_key for r in here if r.output_key} | {
        o for o in outputs - expected_outputs
        if o.startswith(f"{output_prefix}{model}/{input_prefix}")}
    outputs_here &= outputs
    return ReconcileReport(
        bucket=bucket,
        input_prefix=input_prefix,
        output_prefix=output_prefix,
        model=model,
        objects=len(objects),
        records=len(here),
        outputs=len(outputs_here),
        statuses=statuses,
        missing_records=tuple(missing_records),
        stale_records=tuple(stale),
        missing_outputs=tuple(sorted(expected_outputs - outputs)),
        # A JSON Lines file (IMGPIPE_OUTPUT_DOCUMENTS=batch) that no record names is the
        # log of an invocation whose records were all replaced since, or never written
        # (a crash after the file): not a result of its own, so no orphan.
        orphaned_outputs=tuple(sorted(o for o in outputs - expected_outputs
                                      if "/_batches/" not in o)),
        deleted_objects=tuple(deleted),
        other_records=len(records) - len(here),
        other_outputs=len(outputs) - len(outputs_here),
        queue_depth=_depth(sqs_client, queue_url),
        dlq_depth=_depth(sqs_client, dlq_url),
    )


def _depth(sqs_client: Any, url: str | None) -> int | None:
    if not url:
        return None
    with reading(f"queue {url}", "check --queue and --dlq ('' skips the queue checks)"):
        return queue_depth(sqs_client, url)


_MISSING = {"ResourceNotFoundException", "NoSuchBucket", "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue", "404"}


@contextmanager
def reading(what: str, hint: str) -> Iterator[None]:
    """AWS errors while reading `what` become one sentence (an `ImgpipeError`)."""
    from pipeline.aws import error_code

    try:
        yield
    except ImgpipeError:
        raise
    except Exception as e:
        code = error_code(e)
        if code in _MISSING:
            raise ImgpipeError(f"{what} does not exist: {hint}") from e
        detail = f"{code}: {e}" if code else f"{type(e).__name__}: {e}"
        raise ImgpipeError(f"cannot read {what} ({detail}): {hint}") from e


def queue_depth(sqs_client: Any, queue_url: str) -> int:
    """Messages in a queue: visible, in flight and delayed (SQS's approximate counts)."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
             "ApproximateNumberOfMessagesDelayed"]
    attrs = sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
    return sum(int(attrs.get("Attributes", {}).get(n, 0)) for n in names)


def _list(s3_client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, str, int]]:
    """(key, ETag without quotes, size) of every object under `prefix`."""
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"], str(obj.get("ETag", "")).strip('"'), int(obj.get("Size", 0))


def scan_records(ddb_client: Any, table: str, image_prefix: str,
                 model: str) -> Iterator[PredictionRecord]:
    """Every record of `model` whose image URI starts with `image_prefix` (a table scan)."""
    from pipeline.table import scan_records as scan

    return scan(ddb_client, table, image_prefix, model)
