"""The output document follows the record: one job, done with compare-and-swap on S3.

The DynamoDB record decides which object version won (conditional writes, see
`pipeline.service`); the JSON document under the output prefix is a copy of the winning
record, written only after the record. `sync_document` makes the document equal to the
record as it stands now - the record's document when it is `classified`, no document when
it is `rejected`, `gone` or absent - and never lets a slower writer put back an older one:

1. look at the document (HEAD: its ETag, and the record token it was written for);
2. then read the record (consistent read);
3. write or delete conditionally on the ETag seen in 1 (`IfMatch`, or `IfNoneMatch: *`
   when there was none); a lost condition starts again at 1.

Whoever writes a record last syncs after that write; its step 2 sees its own record, and
any other writer's step 3 that comes later carries an ETag from before that sync's write,
so it fails. A writer that crashed between the two writes leaves the record ahead of the
document; its redelivery finds the record done and syncs again (`document_is_current` is
the one HEAD that check costs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.errors import TransientError
from pipeline.records import PredictionRecord

__all__ = [
    "RECORD_TOKEN_META",
    "DocumentState",
    "DocumentStore",
    "record_token",
    "sync_document",
    "document_is_current",
]

RECORD_TOKEN_META = "imgpipe-record"  # user metadata: which record a document was written for
ATTEMPTS = 6


@dataclass(frozen=True)
class DocumentState:
    etag: str  # the document's own ETag, for the conditional write or delete
    token: str  # `record_token` of the record it was written for ("" if unknown)


class DocumentStore(Protocol):
    def head_document(self, bucket: str, key: str) -> DocumentState | None: ...

    def put_json(
        self, bucket: str, key: str, document: Mapping[str, Any], *, token: str = "",
        if_match: str | None = None, conditional: bool = False,
    ) -> bool: ...

    def delete_document(self, bucket: str, key: str, if_match: str) -> bool: ...


def record_token(record: PredictionRecord) -> str:
    """Names one write of a record: the object's ETag and when it was processed."""
    return f"{record.etag or ''}|{record.processed_at}"


def _wanted(record: PredictionRecord | None, key: str) -> PredictionRecord | None:
    """The record whose document belongs at `key`, or None if no document should be there."""
    if record is not None and record.status == "classified" and record.output_key == key:
        return record
    return None


def document_is_current(
    store: DocumentStore, bucket: str, key: str, record: PredictionRecord | None
) -> bool:
    """Does the document at `key` already match `record` (a HEAD, no write)?"""
    head = store.head_document(bucket, key)
    wanted = _wanted(record, key)
    if wanted is None:
        return head is None
    return head is not None and head.token == record_token(wanted)


def sync_document(
    store: DocumentStore,
    read_record: Callable[[], PredictionRecord | None],
    bucket: str,
    key: str,
) -> None:
    """Make the document at `key` match the stored record (see the module docstring)."""
    for _ in range(ATTEMPTS):
        head = store.head_document(bucket, key)
        wanted = _wanted(read_record(), key)
        if wanted is None:
            done = head is None or store.delete_document(bucket, key, if_match=head.etag)
        else:
            token = record_token(wanted)
            done = (head is not None and head.token == token) or store.put_json(
                bucket, key, wanted.to_document(), token=token,
                if_match=head.etag if head else None, conditional=True)
        if done:
            return
    raise TransientError(f"s3://{bucket}/{key}: the output document kept changing under "
                         "concurrent writers, will retry")
