"""Backfill: one Distributed Map item batch through the same core as ingest.

The state machine lists the prefix (ItemReader, `s3:listObjectsV2`) and hands each child a
batch of listing entries (ItemBatcher) plus the execution's options (`BatchInput`):

    {"Items": [{"Key": "...", "ETag": "\\"...\\"", "Size": 123, ...}, ...],
     "BatchInput": {"bucket": "...", "model": "...", "overwrite": false}}

Keys from a listing are not URL-encoded. Folder markers and objects under the output
prefix are ignored (the latter are our own results). Without `overwrite`, objects that
already have a record for this model and ETag are skipped without inference (the service's
one BatchGetItem per batch).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import PermanentError, StateMachineRetry
from pipeline.events import ObjectRef

if TYPE_CHECKING:  # only types: the summary function's lean package has no inference code
    from pipeline.service import ClassificationService, Outcome

__all__ = [
    "BackfillBatch",
    "BackfillIncomplete",
    "COUNT_KEYS",
    "parse_batch",
    "run_batch",
    "summarize",
]

COUNT_KEYS = ("classified", "skipped", "rejected", "gone", "superseded", "failed", "ignored")


class BackfillIncomplete(StateMachineRetry):
    """Some objects of the batch hit transient faults: the state machine retries the batch
    (what is done is skipped on the retry)."""


@dataclass(frozen=True)
class BackfillBatch:
    bucket: str
    refs: tuple[ObjectRef, ...]
    model: str = ""
    overwrite: bool = False
    ignored: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def parse_batch(event: Mapping[str, Any], output_prefix: str) -> BackfillBatch:
    if not isinstance(event, Mapping):
        raise PermanentError("backfill input must be a JSON object with Items and BatchInput")
    options = event.get("BatchInput") or {}
    items = event.get("Items")
    if items is None and "Key" in event:  # a single item (no ItemBatcher)
        items = [event]
    bucket = str(options.get("bucket") or event.get("bucket") or "")
    if not bucket:
        raise PermanentError("backfill batch has no bucket (BatchInput.bucket)")
    if not isinstance(items, list):
        raise PermanentError("backfill batch has no Items list")
    overwrite = options.get("overwrite", False)
    if isinstance(overwrite, str):
        overwrite = overwrite.strip().lower() in ("1", "true", "yes")
    refs: list[ObjectRef] = []
    ignored: list[tuple[str, str]] = []
    for item in items:
        key = str(item.get("Key", ""))
        size = item.get("Size")
        uri = f"s3://{bucket}/{key}"
        if not key:
            ignored.append((uri, "listing entry without a key"))
        elif key.endswith("/") and not size:
            ignored.append((uri, "folder marker (zero-byte key ending in /)"))
        elif key.startswith(output_prefix):
            ignored.append((uri, "under the output prefix: a result, not an input"))
        else:
            refs.append(ObjectRef(bucket=bucket, key=key, etag=item.get("ETag"),
                                  size=int(size) if size is not None else None))
    return BackfillBatch(bucket=bucket, refs=tuple(refs), model=str(options.get("model") or ""),
                         overwrite=bool(overwrite), ignored=tuple(ignored))


def run_batch(
    service: ClassificationService,
    batch: BackfillBatch,
    remaining_ms: Callable[[], int] | None = None,
) -> tuple[dict[str, int], Sequence[Outcome]]:
    outcomes = service.process(batch.refs, overwrite=batch.overwrite, remaining_ms=remaining_ms)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for outcome in outcomes:
        counts[outcome.status] += 1
    counts["ignored"] = len(batch.ignored)
    return counts, outcomes


def summarize(
    map_output: Any, s3_client: Any = None, request: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Add up the children's counts.

    `map_output` is what the Map state produced: with a ResultWriter (the template's) its
    details (`{"ResultWriterDetails": {"Bucket", "Key"}}`, the key of a manifest listing the
    result files); without one, the children's outputs inline (a list). A child that
    failed for good counts its items as failed.
    """
    counts = dict.fromkeys(COUNT_KEYS, 0)
    failed_batches = 0
    models: set[str] = set()

    def add_output(output: Any) -> None:
        if isinstance(output, str):
            output = json.loads(output)
        if isinstance(output, Mapping) and isinstance(output.get("counts"), Mapping):
            for key, value in output["counts"].items():
                if key in counts:
                    counts[key] += int(value)
            if output.get("model"):
                models.add(str(output["model"]))

    def add_failed(entry: Mapping[str, Any]) -> None:
        nonlocal failed_batches
        failed_batches += 1
        try:
            batch = json.loads(entry.get("Input", "{}"))
            counts["failed"] += len(batch.get("Items", [])) or 1
        except (TypeError, ValueError):
            counts["failed"] += 1

    if isinstance(map_output, list):
        for output in map_output:
            add_output(output)
    elif isinstance(map_output, Mapping) and "ResultWriterDetails" in map_output:
        if s3_client is None:
            raise PermanentError("summarize needs an S3 client to read the result files")
        details = map_output["ResultWriterDetails"]
        bucket = details["Bucket"]
        manifest = _read_json(s3_client, bucket, details["Key"])
        files = manifest.get("ResultFiles", {})
        for entry in files.get("SUCCEEDED", []):
            for result in _read_json(s3_client, bucket, entry["Key"]):
                add_output(result.get("Output"))
        for status in ("FAILED", "PENDING"):
            for entry in files.get(status, []):
                for result in _read_json(s3_client, bucket, entry["Key"]):
                    add_failed(result)
    else:
        raise PermanentError("summarize: the Map output is neither a list of results nor "
                             "ResultWriterDetails")
    images = sum(counts[k] for k in COUNT_KEYS if k != "ignored")
    return {
        "request": dict(request or {}),
        "models": sorted(models),
        "counts": counts,
        "images": images,
        "failed_batches": failed_batches,
    }


def _read_json(s3_client: Any, bucket: str, key: str) -> Any:
    from pipeline.aws import translate_client_error

    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as e:
        raise translate_client_error(e, f"reading s3://{bucket}/{key}") from e
    return json.loads(body)
