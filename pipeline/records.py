"""The one record each (image, model) ends with, as a DynamoDB item and as a JSON document.

Scores are rounded to 6 decimal places when a record is built, so that the float in the
record, the Decimal in the item and the number in the document all say the same thing
and `PredictionRecord.from_item(record.to_item()) == record` holds exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, get_args

from pipeline.events import ObjectRef
from pipeline.prediction import ImageTimings, LabelScore, Prediction

__all__ = [
    "SCORE_PLACES",
    "PredictionRecord",
    "Status",
    "classified_record",
    "event_to_record_ms",
    "gone_record",
    "rejected_record",
    "round_score",
    "utc_now_iso",
]

Status = Literal["classified", "rejected", "gone"]
_STATUSES: frozenset[str] = frozenset(get_args(Status))

SCORE_PLACES = 6
_INT_FIELDS = ("bytes", "width", "height", "event_to_record_ms", "output_line")
# Per-image timings, milliseconds to one decimal place (so item, document and record agree).
_MS_FIELDS = ("fetch_ms", "decode_ms", "inference_ms")
MS_PLACES = 1
_STR_FIELDS = (
    "etag", "version_id", "sequencer", "format", "label", "output_key", "error",
)


def round_score(score: float) -> float:
    """The float a score is stored as: rounded to `SCORE_PLACES` via its decimal text."""
    value = float(score)
    if not math.isfinite(value):
        raise ValueError(f"a score must be a finite number, got {score!r}")
    return float(_score_text(value))


def _score_text(score: float) -> str:
    text = f"{score:.{SCORE_PLACES}f}"
    return "0." + "0" * SCORE_PLACES if text == "-0." + "0" * SCORE_PLACES else text


def _score_decimal(score: float) -> Decimal:
    return Decimal(_score_text(score))


@dataclass(frozen=True)
class PredictionRecord:
    image: str  # s3://bucket/key (decoded key): partition key
    model: str  # name@version: sort key
    status: Status
    processed_at: str  # ISO-8601 UTC, e.g. 2026-11-22T01:02:03.456Z
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    label: str | None = None
    score: float | None = None
    top_k: tuple[LabelScore, ...] = ()
    output_key: str | None = None  # classified records only: they alone get a document
    error: str | None = None  # rejected records: the sentence shown to people
    # Timings (absent from records written before they existed): the S3 read, the decode,
    # this image's share of its batch's model run, and the time from the S3 event
    # (`eventTime`) to this record (None without an event time, as in a backfill).
    fetch_ms: float | None = None
    decode_ms: float | None = None
    inference_ms: float | None = None
    event_to_record_ms: int | None = None
    # With IMGPIPE_OUTPUT_DOCUMENTS=batch: the record's line (1-based) in the JSON Lines
    # file `output_key` names; None for a document of its own.
    output_line: int | None = None

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(
                f"status {self.status!r} is not one of {', '.join(sorted(_STATUSES))}"
            )
        for name in ("image", "model", "processed_at"):
            if not getattr(self, name):
                raise ValueError(f"a prediction record needs a non-empty {name}")
        if self.score is not None:
            object.__setattr__(self, "score", round_score(self.score))
        for name in _MS_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, round(float(value), MS_PLACES))
        object.__setattr__(
            self,
            "top_k",
            tuple(
                LabelScore(label=t.label, index=int(t.index), score=round_score(t.score))
                for t in self.top_k
            ),
        )

    @property
    def label_key(self) -> str | None:
        """GSI `by-label` partition key; None keeps rejected and gone rows out of the index."""
        if self.status != "classified" or self.label is None:
            return None
        return f"{self.model}#{self.label}"

    def to_item(self) -> dict[str, Any]:
        """boto3 resource-style item: Decimal numbers, None values left out."""
        item: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "score":
                item["score"] = _score_decimal(value)
            elif f.name == "top_k":
                if value:
                    item["top_k"] = [
                        {
                            "label": t.label,
                            "index": Decimal(t.index),
                            "score": _score_decimal(t.score),
                        }
                        for t in value
                    ]
            elif f.name in _INT_FIELDS:
                item[f.name] = Decimal(int(value))
            elif f.name in _MS_FIELDS:
                item[f.name] = Decimal(f"{value:.{MS_PLACES}f}")
            else:
                item[f.name] = value
        label_key = self.label_key
        if label_key is not None:
            item["label_key"] = label_key
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> PredictionRecord:
        """Inverse of `to_item`; unknown attributes (label_key, a TTL...) are ignored."""
        missing = [k for k in ("image", "model", "status", "processed_at") if not item.get(k)]
        if missing:
            raise ValueError(f"the item lacks {', '.join(missing)}, so it is no prediction record")
        status = str(item["status"])
        if status not in _STATUSES:
            raise ValueError(f"the item has an unknown status {status!r}")
        values: dict[str, Any] = {
            "image": str(item["image"]),
            "model": str(item["model"]),
            "status": status,
            "processed_at": str(item["processed_at"]),
        }
        for name in _STR_FIELDS:
            if item.get(name) is not None:
                values[name] = str(item[name])
        for name in _INT_FIELDS:
            if item.get(name) is not None:
                values[name] = _to_int(item[name], name)
        if item.get("score") is not None:
            values["score"] = float(item["score"])
        for name in _MS_FIELDS:
            if item.get(name) is not None:
                values[name] = float(item[name])
        values["top_k"] = tuple(_label_score(entry) for entry in item.get("top_k") or ())
        return cls(**values)

    def to_document(self) -> dict[str, Any]:
        """The output JSON document: every record field, in declaration order, nulls kept."""
        doc: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "top_k":
                doc["top_k"] = [
                    {"label": t.label, "index": t.index, "score": t.score} for t in value
                ]
            else:
                doc[f.name] = value
        return doc


def _to_int(value: Any, name: str) -> int:
    number = Decimal(value) if not isinstance(value, Decimal) else value
    if number != number.to_integral_value():
        raise ValueError(f"the item's {name} is not a whole number: {value!r}")
    return int(number)


def _label_score(entry: Any) -> LabelScore:
    if not isinstance(entry, Mapping):
        raise ValueError(f"a top_k entry must be a map of label, index and score, got {entry!r}")
    try:
        return LabelScore(
            label=str(entry["label"]),
            index=_to_int(entry["index"], "top_k index"),
            score=float(entry["score"]),
        )
    except KeyError as e:
        raise ValueError(f"a top_k entry lacks {e.args[0]!r}: {entry!r}") from None


def utc_now_iso(now: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a Z, e.g. 2026-11-22T01:02:03.456Z.

    A naive `now` is taken to be UTC already.
    """
    moment = now if now is not None else datetime.now(UTC)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _record(
    ref: ObjectRef,
    model_id: str,
    status: Status,
    now: datetime | None,
    nbytes: int | None,
    **fields: Any,
) -> PredictionRecord:
    """What every record says about its object; `fields` add the status's own."""
    moment = now if now is not None else datetime.now(UTC)
    return PredictionRecord(
        image=ref.uri,
        model=model_id,
        status=status,
        processed_at=utc_now_iso(moment),
        event_to_record_ms=event_to_record_ms(ref.event_time, moment),
        etag=ref.etag,
        version_id=ref.version_id,
        sequencer=ref.sequencer,
        bytes=nbytes if nbytes is not None else ref.size,
        **fields,
    )


def event_to_record_ms(event_time: str | None, now: datetime) -> int | None:
    """Milliseconds from an S3 event's time (ISO-8601, `...Z`) to `now`; None without a
    readable event time. A clock a little behind S3's gives 0, not a negative time."""
    if not event_time:
        return None
    try:
        sent = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    sent = sent.replace(tzinfo=UTC) if sent.tzinfo is None else sent
    moment = now.replace(tzinfo=UTC) if now.tzinfo is None else now
    return max(0, round((moment - sent).total_seconds() * 1000))


def classified_record(
    ref: ObjectRef,
    model_id: str,
    prediction: Prediction,
    output_key: str | None,
    now: datetime | None = None,
    nbytes: int | None = None,
    timings: ImageTimings | None = None,
    output_line: int | None = None,
) -> PredictionRecord:
    timed: dict[str, float] = {}
    if timings is not None:
        timed = {"fetch_ms": timings.fetch_ms, "decode_ms": timings.decode_ms,
                 "inference_ms": timings.inference_ms}
    return _record(
        ref, model_id, "classified", now, nbytes, **timed,
        width=prediction.width,
        height=prediction.height,
        format=prediction.format,
        label=prediction.label,
        score=prediction.score,
        top_k=tuple(prediction.top_k),
        output_key=output_key,
        output_line=output_line,
    )


def rejected_record(
    ref: ObjectRef,
    model_id: str,
    error: str,
    now: datetime | None = None,
    nbytes: int | None = None,
) -> PredictionRecord:
    if not error or not error.strip():
        raise ValueError("a rejected record needs the sentence that says what is wrong")
    return _record(ref, model_id, "rejected", now, nbytes, error=error)


def gone_record(ref: ObjectRef, model_id: str, now: datetime | None = None) -> PredictionRecord:
    return _record(ref, model_id, "gone", now, None)
