"""IMGPIPE_OUTPUT_DOCUMENTS: what the service writes to S3 besides the record.

One strategy, chosen once from the settings (`output_documents_for`, called by the
factory) instead of the mode compared as a string wherever it matters:

- `PerImageDocuments` ("per-image", the default): a JSON document per image beside the
  record, kept equal to it by `pipeline.documents.sync_document`;
- `BatchDocuments` ("batch"): the classified images of an invocation as one JSON Lines
  file, written before their records (`ClassificationService` does that write, as it holds
  the invocation's results); nothing to follow afterwards;
- `NoDocuments` ("none"): the record alone.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.documents import DocumentStore, document_is_current, record_token, sync_document
from pipeline.errors import ConfigError
from pipeline.events import ObjectRef
from pipeline.keys import output_key_for
from pipeline.records import PredictionRecord
from pipeline.settings import OUTPUT_DOCUMENTS, Settings

__all__ = [
    "BatchDocuments",
    "NoDocuments",
    "OutputDocuments",
    "PerImageDocuments",
    "RecordReader",
    "output_documents_for",
]


class RecordReader(Protocol):
    def get_many(
        self, keys: list[tuple[str, str]]
    ) -> dict[tuple[str, str], PredictionRecord]: ...

    def token(self, image: str, model: str) -> str | None: ...


class OutputDocuments(Protocol):
    """What the service asks of the output-document mode."""

    @property
    def collects(self) -> bool:
        """Classified images of an invocation go into one file, written before their
        records (`ClassificationService._write_batch`)."""
        ...

    def output_key(self, ref: ObjectRef, model: str) -> str | None:
        """The `output_key` of a classified record written on its own (not collected)."""
        ...

    def follow(self, ref: ObjectRef, held: PredictionRecord, just_written: bool = False) -> None:
        """The record this writer holds (wrote or found) is stored: make the output follow."""
        ...

    def ensure(self, ref: ObjectRef, existing: PredictionRecord) -> None:
        """The object was already done: make sure its output is there (a writer may have
        stopped between the record and the document)."""
        ...


class PerImageDocuments:
    """A JSON document per image under the output prefix, following its record."""

    collects = False

    def __init__(self, store: DocumentStore, sink: RecordReader, settings: Settings) -> None:
        self.store = store
        self.sink = sink
        self.output_bucket = settings.output_bucket
        self.output_prefix = settings.output_prefix

    def output_key(self, ref: ObjectRef, model: str) -> str | None:
        return output_key_for(ref.key, model, self.output_prefix)

    def location(self, ref: ObjectRef, model: str) -> tuple[str, str]:
        bucket = self.output_bucket or ref.bucket
        return bucket, output_key_for(ref.key, model, self.output_prefix)

    def follow(self, ref: ObjectRef, held: PredictionRecord, just_written: bool = False) -> None:
        """`sync_document` for the record this writer holds: while it is still the stored
        one, reading its token (two attributes) stands for reading it."""
        bucket, key = self.location(ref, held.model)

        def read_record() -> PredictionRecord | None:
            token = self.sink.token(ref.uri, held.model)
            if token is None:
                return None
            if token == record_token(held):
                return held
            return self.sink.get_many([(ref.uri, held.model)]).get((ref.uri, held.model))

        sync_document(self.store, read_record, bucket, key,
                      just_written=held if just_written else None)

    def ensure(self, ref: ObjectRef, existing: PredictionRecord) -> None:
        bucket, key = self.location(ref, existing.model)
        if not document_is_current(self.store, bucket, key, existing):
            self.follow(ref, existing)


class BatchDocuments:
    """One JSON Lines file per invocation; its records name their line in it."""

    collects = True

    def output_key(self, ref: ObjectRef, model: str) -> str | None:
        return None  # rejected and gone records have no line; classified ones are collected

    def follow(self, ref: ObjectRef, held: PredictionRecord, just_written: bool = False) -> None:
        return None  # the file was written before the records

    def ensure(self, ref: ObjectRef, existing: PredictionRecord) -> None:
        return None


class NoDocuments:
    """The record alone."""

    collects = False

    def output_key(self, ref: ObjectRef, model: str) -> str | None:
        return None

    def follow(self, ref: ObjectRef, held: PredictionRecord, just_written: bool = False) -> None:
        return None

    def ensure(self, ref: ObjectRef, existing: PredictionRecord) -> None:
        return None


def output_documents_for(settings: Settings, store: DocumentStore,
                         sink: RecordReader) -> OutputDocuments:
    """The strategy for `settings.output_documents` (one of `OUTPUT_DOCUMENTS`)."""
    mode = settings.output_documents
    if mode == "per-image":
        return PerImageDocuments(store, sink, settings)
    if mode == "batch":
        return BatchDocuments()
    if mode == "none":
        return NoDocuments()
    raise ConfigError(f"IMGPIPE_OUTPUT_DOCUMENTS={mode!r} must be one of "
                      f"{', '.join(OUTPUT_DOCUMENTS)}")
