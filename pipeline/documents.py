"""The output document follows the record: one job, done with compare-and-swap on S3.

The DynamoDB record decides which object version won (conditional writes, see
`pipeline.service`); the JSON document under the output prefix is a copy of the winning
record, written only after the record. `sync_document` makes the document equal to the
record as it stands now - the record's document when it is `classified`, no document when
it is `rejected`, `gone` or absent - and never lets a slower writer leave an older one:

1. look at the document (HEAD: its ETag, and the record token it was written for);
2. then read the record (consistent read);
3. write or delete conditionally on the ETag seen in 1 (`IfMatch`, or `IfNoneMatch: *`
   when there was none); a lost condition starts again at 1;
4. after a write, read the record's token again: if another record was stored meanwhile,
   start again at 1.

Whoever writes a record last syncs after that write. A slower writer's step 3 that comes
after that sync's own write carries an ETag from before it, so it fails. Step 4 covers the
sync that had nothing to write (a rejected record and no document yet): a slower writer's
document that lands after it is then written after the record changed, and its step 4 sees
the change and takes it back.

A writer that has just stored a classified record starts at 3 with `IfNoneMatch: *` and
that record, skipping 1 and 2: step 4 still checks the record, and a document already there
fails the condition and sends it to 1. A first write then costs a PUT and a read of two
attributes, instead of a HEAD, a read of the item and a PUT.

A writer that crashed between the two writes leaves the record ahead of the document; its
redelivery finds the record done and syncs again (`document_is_current` is the one HEAD
that check costs).
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
    "token_of",
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
    return token_of(record.etag, record.processed_at)


def token_of(etag: str | None, processed_at: str) -> str:
    return f"{etag or ''}|{processed_at}"


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
    *,
    just_written: PredictionRecord | None = None,
) -> None:
    """Make the document at `key` match the stored record (see the module docstring).

    `just_written`: the record this writer has just stored; its document is first tried
    where there is none, without looking (steps 1 and 2 skipped).
    """
    guess = _wanted(just_written, key)
    for _ in range(ATTEMPTS):
        head: DocumentState | None = None
        wanted: PredictionRecord | None = guess
        if guess is not None:
            guess = None
        else:
            head = store.head_document(bucket, key)
            wanted = _wanted(read_record(), key)
        if wanted is None:
            if head is None or store.delete_document(bucket, key, if_match=head.etag):
                return
            continue
        token = record_token(wanted)
        if head is not None and head.token == token:
            return
        if store.put_json(bucket, key, wanted.to_document(), token=token,
                          if_match=head.etag if head else None, conditional=True):
            stored = read_record()
            if stored is not None and record_token(stored) == token:
                return
    raise TransientError(f"s3://{bucket}/{key}: the output document kept changing under "
                         "concurrent writers, will retry")
