"""Backfill: one Distributed Map item batch through the same core as ingest.

The state machine lists the prefix (ItemReader, `s3:listObjectsV2`) and hands each child a
batch of listing entries (ItemBatcher) plus the execution's options (`BatchInput`):

    {"Items": [{"Etag": "\\"...\\"", "Key": "...", "LastModified": 1668699881,
                "Size": 123, "StorageClass": "STANDARD"}, ...],
     "BatchInput": {"bucket": "...", "model": "...", "overwrite": false}}

That is AWS's documented item shape (`Etag`, not S3's `ETag`; tests/events has the
example). The listed ETag makes the object read conditional (`IfMatch`) and lets objects
already classified for it be skipped. Keys from a listing are not URL-encoded. Folder
markers and objects under the output prefix are ignored (the latter are our own results).
Without `overwrite`, objects that already have a record for this model and ETag are
skipped without inference (the service's one BatchGetItem per batch).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    # The execution's start ($$.Execution.StartTime): a record written since was written
    # by this run (an earlier attempt of this batch), not found done before it.
    run_started: str = ""


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
            refs.append(ObjectRef(bucket=bucket, key=key, etag=_listed_etag(item),
                                  size=int(size) if size is not None else None))
    return BackfillBatch(bucket=bucket, refs=tuple(refs), model=str(options.get("model") or ""),
                         overwrite=bool(overwrite), ignored=tuple(ignored),
                         run_started=str(options.get("run_started") or ""))


def _listed_etag(item: Mapping[str, Any]) -> str | None:
    """The ETag of a listing entry as the ItemReader hands it: `Etag`, quoted."""
    etag = item.get("Etag")
    return str(etag) if etag else None


def run_batch(
    service: ClassificationService,
    batch: BackfillBatch,
    remaining_ms: Callable[[], int] | None = None,
) -> tuple[dict[str, int], Sequence[Outcome]]:
    outcomes = service.process(batch.refs, overwrite=batch.overwrite, remaining_ms=remaining_ms)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    started = _instant(batch.run_started)
    for outcome in outcomes:
        status: str = outcome.status
        record = outcome.record
        if (status == "skipped" and record is not None and started is not None
                and record.status in counts and (_instant(record.processed_at) or started)
                > started):
            status = record.status  # done by an earlier attempt of this batch, this run
        counts[status] += 1
    counts["ignored"] = len(batch.ignored)
    return counts, outcomes


def _instant(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# Failed batches named in the summary (the first ones; the counts cover them all).
MAX_FAILURES_LISTED = 5


def summarize(
    map_output: Any, s3_client: Any = None, request: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Add up the children's counts.

    `map_output` is what the Map state produced: with a ResultWriter (the template's) its
    details (`{"ResultWriterDetails": {"Bucket", "Key"}}`, the key of a manifest listing the
    result files); without one, the children's outputs inline (a list). A child that
    failed for good counts its items as failed.

    The result files are streamed: AWS splits them at 5 GB, and each child's entry carries
    its whole input (~14 KB for a batch of 64 listing entries), so a million objects make
    ~215 MB of results. Memory stays at one read chunk plus one entry, whatever the number
    and size of the files.
    """
    counts = dict.fromkeys(COUNT_KEYS, 0)
    failed_batches = 0
    models: set[str] = set()
    failures: list[dict[str, Any]] = []

    def add_output(output: Any) -> None:
        if isinstance(output, str):
            output = json.loads(output)
        if isinstance(output, Mapping) and isinstance(output.get("counts"), Mapping):
            for key, value in output["counts"].items():
                if key in counts:
                    counts[key] += int(value)
            if output.get("model"):
                models.add(str(output["model"]))

    def add_failed(entry: Mapping[str, Any], status: str) -> None:
        nonlocal failed_batches
        failed_batches += 1
        try:
            batch = json.loads(entry.get("Input", "{}"))
            items = batch.get("Items", []) if isinstance(batch, Mapping) else []
        except (TypeError, ValueError):
            items = []
        counts["failed"] += len(items) or 1
        if len(failures) < MAX_FAILURES_LISTED:
            failures.append({
                "status": status,
                "error": str(entry.get("Error") or ("not started" if status == "PENDING"
                                                    else status)),
                "cause": _cause_text(entry.get("Cause")),
                "first_key": str(items[0].get("Key", "")) if items else "",
                "objects": len(items),
            })

    if isinstance(map_output, list):
        for output in map_output:
            add_output(output)
    elif isinstance(map_output, Mapping) and "ResultWriterDetails" in map_output:
        if s3_client is None:
            raise PermanentError("summarize needs an S3 client to read the result files")
        details = map_output["ResultWriterDetails"]
        bucket = details["Bucket"]
        manifest = json.loads(b"".join(_read_chunks(s3_client, bucket, details["Key"])))
        files = manifest.get("ResultFiles", {})
        for entry in files.get("SUCCEEDED", []):
            for result in result_entries(s3_client, bucket, entry["Key"]):
                add_output(result.get("Output"))
        for status in ("FAILED", "PENDING"):
            for entry in files.get(status, []):
                for result in result_entries(s3_client, bucket, entry["Key"]):
                    add_failed(result, status)
    else:
        raise PermanentError("summarize: the Map output is neither a list of results nor "
                             "ResultWriterDetails")
    images = sum(counts[k] for k in COUNT_KEYS if k != "ignored")
    summary: dict[str, Any] = {
        "request": dict(request or {}),
        "models": sorted(models),
        "counts": counts,
        "images": images,
        "failed_batches": failed_batches,
    }
    if failures:
        summary["failures"] = failures
    return summary


def _cause_text(cause: Any) -> str:
    """A child's failure cause (Lambda's error JSON) as `errorType: errorMessage`."""
    text = str(cause or "")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(parsed, Mapping) and parsed.get("errorMessage"):
        kind, message = str(parsed.get("errorType") or "Error"), str(parsed["errorMessage"])
        return (message if message.startswith(kind) else f"{kind}: {message}")[:500]
    return text[:500]


def result_entries(s3_client: Any, bucket: str, key: str) -> Iterator[dict[str, Any]]:
    """The child executions of one ResultWriter file, one at a time (streamed)."""
    for entry in iter_json_values(_read_chunks(s3_client, bucket, key)):
        if isinstance(entry, dict):
            yield entry


def iter_json_values(chunks: Iterable[bytes]) -> Iterator[Any]:
    """The elements of a JSON array (or the values of a JSON Lines text) read from byte
    chunks, each decoded as soon as it is complete: memory holds one chunk and one
    element, not the document.

    Elements are found with the C decoder (`raw_decode`) on a buffer; an element cut by
    the end of the buffer fails to decode and is retried once more bytes arrived.
    """
    decoder = json.JSONDecoder()
    text_of = codecs.getincrementaldecoder("utf-8")()
    buffer = ""
    pos = 0
    opened = False
    skip = " \t\r\n,"
    chunks = iter(chunks)
    exhausted = False
    while True:
        while pos < len(buffer) and buffer[pos] in skip:
            pos += 1
        if not opened and pos < len(buffer):
            opened = True
            if buffer[pos] == "[":
                pos += 1
                continue
        if pos < len(buffer) and buffer[pos] == "]":
            return
        if pos < len(buffer):
            try:
                value, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                if exhausted:
                    raise PermanentError(
                        f"a ResultWriter file is not valid JSON near character {pos} of "
                        f"its last part") from None
            else:
                # A number at the very end of the buffer may continue in the next chunk.
                if end < len(buffer) or exhausted or buffer[end - 1] in "}]\"":
                    yield value
                    pos = end
                    continue
        if exhausted:
            if buffer[pos:].strip():
                raise PermanentError("a ResultWriter file ends in the middle of a value")
            return
        chunk = next(chunks, None)
        if chunk is None:
            exhausted = True
            buffer = buffer[pos:] + text_of.decode(b"", final=True)
        else:
            buffer = buffer[pos:] + text_of.decode(chunk)
        pos = 0


READ_CHUNK_BYTES = 1 << 20


def _read_chunks(s3_client: Any, bucket: str, key: str) -> Iterator[bytes]:
    from pipeline.aws import translate_client_error

    where = f"reading s3://{bucket}/{key}"
    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
        while True:
            chunk = body.read(READ_CHUNK_BYTES)
            if not chunk:
                return
            yield chunk
    except Exception as e:
        raise translate_client_error(e, where) from e
