"""Turn one SQS message body into the S3 objects it announces.

Accepted shapes (each possibly wrapped in an SNS envelope, `{"Type": "Notification",
"Message": "<json>"}`):

- S3 event notifications, `{"Records": [...]}`, one or more records per message;
- the `s3:TestEvent` S3 sends when a notification configuration is saved;
- EventBridge events from `aws.s3` (a rule targeting the queue).

S3 notifications URL-encode keys the way HTML forms do ("red flower.jpg" arrives as
"red+flower.jpg"); real S3 leaves `/` alone, moto encodes it as `%2F`, and `unquote_plus`
handles both. EventBridge keys are decoded the same way, as AWS's own Powertools does
(`S3EventBridgeNotificationObject.key`). moto's EventBridge emulation sends keys raw; the
local stack encodes them as S3 does (`imgpipe.local.s3_events`).

Anything that is not one of these shapes raises `PermanentError`: it will never parse,
so retrying it only delays its trip to the DLQ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from pipeline.errors import EventShapeError, PermanentError

__all__ = ["ObjectRef", "ParsedMessage", "parse_message_body", "sqs_messages"]

_PREVIEW_CHARS = 80
_MAX_DIGITS = 20  # an object size has at most 14 (5 TB); more is no size


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str  # decoded
    etag: str | None = None  # without surrounding quotes
    size: int | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_time: str | None = None

    def __post_init__(self) -> None:
        # ListObjectsV2 and HeadObject quote ETags, notifications do not: store one form.
        if self.etag is not None:
            etag = self.etag.strip()
            if len(etag) >= 2 and etag[0] == etag[-1] == '"':
                etag = etag[1:-1]
            object.__setattr__(self, "etag", etag or None)
        if self.version_id == "":
            object.__setattr__(self, "version_id", None)
        if self.sequencer == "":
            object.__setattr__(self, "sequencer", None)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ParsedMessage:
    refs: tuple[ObjectRef, ...]
    skipped: tuple[tuple[str, str], ...]  # (what, reason)


_FOLDER_MARKER = "folder marker (zero-byte key ending in /)"


_SQS_SHAPE = ('an SQS event as the ingest queue sends it: {"Records": [{"messageId": ..., '
              '"body": ...}, ...]}')


def sqs_messages(event: Any) -> list[tuple[str, str]]:
    """(message id, body) of each record of the SQS event a function was invoked with;
    `EventShapeError` with a sentence for anything else (an invoke by hand with `{}`)."""
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        got = (f"an object with keys {', '.join(sorted(map(str, event)))}"
               if isinstance(event, dict) and event else
               "an empty object" if isinstance(event, dict) else
               f"a JSON {type(event).__name__}")
        raise EventShapeError(f"this function takes {_SQS_SHAPE}; it was invoked with {got}")
    messages: list[tuple[str, str]] = []
    for position, record in enumerate(records):
        message_id = record.get("messageId") if isinstance(record, dict) else None
        body = record.get("body") if isinstance(record, dict) else None
        if not isinstance(message_id, str) or not message_id or not isinstance(body, str):
            raise EventShapeError(f"record {position} of the event has no messageId and "
                                  f"body: this function takes {_SQS_SHAPE}")
        messages.append((message_id, body))
    return messages


def parse_message_body(body: str) -> ParsedMessage:
    """Parse one SQS message body; raise `PermanentError` if it is no known shape.

    Whatever goes wrong while reading one body stays that body's `PermanentError`: a
    message must never fail the batch it arrived in.
    """
    try:
        return _parse_body(body)
    except PermanentError:
        raise
    except Exception as e:  # noqa: BLE001 - any surprise in one body is that body's problem
        raise PermanentError(
            f"the message body could not be read as an S3 event ({type(e).__name__}: "
            f"{_shorten(str(e))}; {_describe(body)})"
        ) from None


def _parse_body(body: str) -> ParsedMessage:
    doc = _load_json(body, "the message body")
    if _is_sns_envelope(doc):
        message = doc.get("Message")
        if not isinstance(message, str):
            raise PermanentError(
                "the message is an SNS notification without a text 'Message' field"
            )
        doc = _load_json(message, "the SNS notification's Message")
    return _parse_document(doc, body)


def _load_json(text: str, what: str) -> Mapping[str, Any]:
    try:
        doc = json.loads(text)
    except RecursionError:
        raise PermanentError(
            f"{what} is JSON nested too deeply to read, so it cannot be an S3 event "
            f"({_describe(text)})"
        ) from None
    except (TypeError, json.JSONDecodeError):
        raise PermanentError(
            f"{what} is not JSON, so it cannot be an S3 event ({_describe(text)})"
        ) from None
    except ValueError as e:  # e.g. an integer longer than Python reads (4,300 digits)
        raise PermanentError(
            f"{what} is JSON that cannot be read ({_shorten(str(e))}), so it cannot be an "
            f"S3 event ({_describe(text)})"
        ) from None
    if not isinstance(doc, dict):
        raise PermanentError(
            f"{what} is JSON but not an object, so it cannot be an S3 event "
            f"({_describe(text)})"
        )
    return doc


def _is_sns_envelope(doc: Mapping[str, Any]) -> bool:
    return doc.get("Type") == "Notification" and "Message" in doc


def _parse_document(doc: Mapping[str, Any], original: str) -> ParsedMessage:
    if "Records" in doc:
        return _parse_s3_notification(doc["Records"])
    if doc.get("Event") == "s3:TestEvent":
        bucket = doc.get("Bucket")
        what = f"s3://{bucket}" if isinstance(bucket, str) and bucket else "s3:TestEvent"
        return ParsedMessage(refs=(), skipped=((what, "test event"),))
    if doc.get("source") == "aws.s3" and "detail-type" in doc:
        return _parse_eventbridge(doc)
    raise PermanentError(
        "the message is JSON but neither an S3 event notification, an S3 test event, an "
        f"EventBridge event from aws.s3 nor an SNS envelope of one ({_describe(original)})"
    )


def _parse_s3_notification(records: Any) -> ParsedMessage:
    if not isinstance(records, list) or not records:
        raise PermanentError(
            "the message has a 'Records' field but it is not a non-empty list of S3 records"
        )
    refs: list[ObjectRef] = []
    skipped: list[tuple[str, str]] = []
    s3_records = 0
    for position, record in enumerate(records):
        s3 = record.get("s3") if isinstance(record, dict) else None
        if not isinstance(s3, dict):
            source = record.get("eventSource") if isinstance(record, dict) else None
            skipped.append(
                (f"record {position}", f"not an S3 record (eventSource {source!r})")
            )
            continue
        s3_records += 1
        bucket, raw_key, obj = _bucket_and_key(s3.get("bucket"), s3.get("object"), position)
        key = unquote_plus(raw_key)
        uri = f"s3://{bucket}/{key}"
        event_name = record.get("eventName")
        if not isinstance(event_name, str) or not event_name:
            skipped.append((uri, "S3 record without an eventName"))
            continue
        name = event_name.removeprefix("s3:")
        if not name.startswith("ObjectCreated:"):
            skipped.append((uri, f"not an object-created event ({name})"))
            continue
        size = _optional_int(obj.get("size"), "object size", position)
        if size == 0 and key.endswith("/"):
            skipped.append((uri, _FOLDER_MARKER))
            continue
        refs.append(
            ObjectRef(
                bucket=bucket,
                key=key,
                etag=_optional_str(obj.get("eTag")),
                size=size,
                version_id=_optional_str(obj.get("versionId")),
                sequencer=_optional_str(obj.get("sequencer")),
                event_time=_optional_str(record.get("eventTime")),
            )
        )
    if s3_records == 0:
        raise PermanentError(
            "the message has 'Records' but none of them is an S3 record (it may be another "
            "service's event sent to the wrong queue)"
        )
    return ParsedMessage(refs=tuple(refs), skipped=tuple(skipped))


def _parse_eventbridge(doc: Mapping[str, Any]) -> ParsedMessage:
    detail = doc.get("detail")
    if not isinstance(detail, dict):
        raise PermanentError("the EventBridge event from aws.s3 has no 'detail' object")
    bucket, raw_key, obj = _bucket_and_key(detail.get("bucket"), detail.get("object"), None)
    key = unquote_plus(raw_key)
    uri = f"s3://{bucket}/{key}"
    detail_type = doc.get("detail-type")
    if detail_type != "Object Created":
        reason = f"not an object-created event ({detail_type})"
        return ParsedMessage(refs=(), skipped=((uri, reason),))
    size = _optional_int(obj.get("size"), "object size", None)
    if size == 0 and key.endswith("/"):
        return ParsedMessage(refs=(), skipped=((uri, _FOLDER_MARKER),))
    time = doc.get("time")
    ref = ObjectRef(
        bucket=bucket,
        key=key,
        etag=_optional_str(obj.get("etag")),  # "eTag" in S3's notifications, not here
        size=size,
        version_id=_optional_str(obj.get("version-id")),
        sequencer=_optional_str(obj.get("sequencer")),
        event_time=time if isinstance(time, str) and time else None,
    )
    return ParsedMessage(refs=(ref,), skipped=())


def _bucket_and_key(
    bucket: Any, obj: Any, position: int | None
) -> tuple[str, str, Mapping[str, Any]]:
    where = "the S3 event" if position is None else f"S3 record {position}"
    name = bucket.get("name") if isinstance(bucket, dict) else None
    if not isinstance(name, str) or not name:
        raise PermanentError(f"{where} does not name its bucket (bucket.name is missing)")
    key = obj.get("key") if isinstance(obj, dict) else None
    if not isinstance(key, str) or not key:
        raise PermanentError(f"{where} does not name its object (object.key is missing)")
    assert isinstance(obj, dict)
    return name, key, obj


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text or None


def _optional_int(value: Any, what: str, position: int | None) -> int | None:
    if value is None or value == "":
        return None
    where = "the S3 event" if position is None else f"S3 record {position}"
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float):
        number = int(value) if value.is_integer() else None
    elif isinstance(value, str):
        digits = value.strip()
        readable = digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS
        number = int(digits) if readable else None
    if number is None or number < 0:
        raise PermanentError(
            f"{where} has an {what} that is not a whole number: {_shorten(repr(value))}")
    return number


def _shorten(text: str) -> str:
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "..."


def _describe(text: Any) -> str:
    if not isinstance(text, str):
        return f"it is a {type(text).__name__}, not text"
    if not text.strip():
        return "it is empty"
    short = text[:_PREVIEW_CHARS]
    return f"it starts with {short!r}" + ("..." if len(text) > _PREVIEW_CHARS else "")
