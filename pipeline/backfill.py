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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ImgpipeError, PermanentError
from pipeline.events import ObjectRef
from pipeline.service import ClassificationService, Outcome

__all__ = [
    "BackfillBatch",
    "BackfillIncomplete",
    "COUNT_KEYS",
    "parse_batch",
    "run_batch",
]

COUNT_KEYS = ("classified", "skipped", "rejected", "gone", "superseded", "failed", "ignored")


class BackfillIncomplete(ImgpipeError):
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
