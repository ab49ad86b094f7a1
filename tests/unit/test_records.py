from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.classifier import ImageTimings, LabelScore, Prediction
from pipeline.events import ObjectRef
from pipeline.records import (
    PredictionRecord,
    Status,
    classified_record,
    gone_record,
    rejected_record,
    round_score,
    utc_now_iso,
)

NOW = datetime(2026, 11, 22, 1, 2, 3, 456789, tzinfo=UTC)
MODEL = "efficientnet-lite0@1"
REF = ObjectRef(
    bucket="imgpipe-local",
    key="incoming/holiday/beach photo.jpg",
    etag="9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    size=204800,
    version_id="v1",
    sequencer="0065000000000000A3",
)
PREDICTION = Prediction(
    label="seashore",
    score=0.81234567891,
    top_k=(
        LabelScore("seashore", 978, 0.81234567891),
        LabelScore("sandbar", 977, 0.1000000049),
        LabelScore("lakeside", 975, 1e-9),
    ),
    width=4000,
    height=3000,
    format="JPEG",
)
OUT_KEY = "predictions/efficientnet-lite0@1/incoming/holiday/beach photo.jpg.json"


def classified() -> PredictionRecord:
    return classified_record(REF, MODEL, PREDICTION, OUT_KEY, now=NOW)


def walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in walk(v)]
    if isinstance(value, list):
        return [x for v in value for x in walk(v)]
    return [value]


# ---- utc_now_iso -----------------------------------------------------------------------


def test_utc_now_iso_format() -> None:
    assert utc_now_iso(NOW) == "2026-11-22T01:02:03.456Z"


def test_utc_now_iso_converts_other_zones_and_assumes_naive_is_utc() -> None:
    paris = NOW.astimezone(timezone(timedelta(hours=1)))
    assert utc_now_iso(paris) == "2026-11-22T01:02:03.456Z"
    assert utc_now_iso(NOW.replace(tzinfo=None)) == "2026-11-22T01:02:03.456Z"


def test_utc_now_iso_defaults_to_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    stamp = datetime.strptime(utc_now_iso(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= stamp <= datetime.now(UTC)


# ---- builders --------------------------------------------------------------------------


def test_classified_record_carries_the_object_and_prediction() -> None:
    r = classified()
    assert r.image == "s3://imgpipe-local/incoming/holiday/beach photo.jpg"
    assert (r.model, r.status, r.processed_at) == (MODEL, "classified", "2026-11-22T01:02:03.456Z")
    assert (r.etag, r.version_id, r.sequencer, r.bytes) == (
        REF.etag, "v1", "0065000000000000A3", 204800,
    )
    assert (r.width, r.height, r.format, r.label) == (4000, 3000, "JPEG", "seashore")
    assert r.score == 0.812346
    assert [t.score for t in r.top_k] == [0.812346, 0.1, 0.0]
    assert r.output_key == OUT_KEY and r.error is None
    assert r.label_key == "efficientnet-lite0@1#seashore"


def test_classified_record_prefers_measured_bytes() -> None:
    r = classified_record(REF, MODEL, PREDICTION, OUT_KEY, now=NOW, nbytes=123)
    assert r.bytes == 123


def test_rejected_record() -> None:
    r = rejected_record(REF, MODEL, "not an image: the data is plain text", now=NOW, nbytes=17)
    assert (r.status, r.error, r.bytes) == ("rejected", "not an image: the data is plain text", 17)
    assert r.label is None and r.score is None and r.top_k == () and r.output_key is None
    assert r.label_key is None
    assert rejected_record(REF, MODEL, "x", now=NOW).bytes == REF.size


def test_rejected_record_needs_a_sentence() -> None:
    with pytest.raises(ValueError):
        rejected_record(REF, MODEL, "  ", now=NOW)


def test_gone_record() -> None:
    r = gone_record(REF, MODEL, now=NOW)
    assert (r.status, r.image, r.label_key, r.output_key) == ("gone", REF.uri, None, None)


def test_invalid_records_are_refused() -> None:
    with pytest.raises(ValueError, match="status"):
        PredictionRecord(image="s3://b/k", model=MODEL, status="odd", processed_at="t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image"):
        PredictionRecord(image="", model=MODEL, status="gone", processed_at="t")
    with pytest.raises(ValueError, match="finite"):
        PredictionRecord(
            image="s3://b/k", model=MODEL, status="classified", processed_at="t",
            score=float("nan"),
        )


# ---- DynamoDB item ---------------------------------------------------------------------


def test_item_uses_decimals_and_omits_none() -> None:
    item = classified().to_item()
    assert item == {
        "image": "s3://imgpipe-local/incoming/holiday/beach photo.jpg",
        "model": MODEL,
        "status": "classified",
        "processed_at": "2026-11-22T01:02:03.456Z",
        "etag": REF.etag,
        "version_id": "v1",
        "sequencer": "0065000000000000A3",
        "bytes": Decimal(204800),
        "width": Decimal(4000),
        "height": Decimal(3000),
        "format": "JPEG",
        "label": "seashore",
        "score": Decimal("0.812346"),
        "top_k": [
            {"label": "seashore", "index": Decimal(978), "score": Decimal("0.812346")},
            {"label": "sandbar", "index": Decimal(977), "score": Decimal("0.100000")},
            {"label": "lakeside", "index": Decimal(975), "score": Decimal("0.000000")},
        ],
        "output_key": OUT_KEY,
        "label_key": "efficientnet-lite0@1#seashore",
    }
    assert not any(isinstance(v, float) for v in walk(item))


def test_item_is_accepted_by_boto3_serializer() -> None:
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    for record in (classified(), rejected_record(REF, MODEL, "bad", now=NOW)):
        wire = {k: serializer.serialize(v) for k, v in record.to_item().items()}
        assert wire["image"] == {"S": record.image}


def test_rejected_item_stays_out_of_the_label_index() -> None:
    item = rejected_record(REF, MODEL, "truncated JPEG", now=NOW).to_item()
    assert "label_key" not in item and "score" not in item and "top_k" not in item
    assert item["error"] == "truncated JPEG"


@pytest.mark.parametrize(
    "record",
    [
        classified(),
        rejected_record(REF, MODEL, "not an image", now=NOW, nbytes=3),
        gone_record(ObjectRef(bucket="b", key="k"), MODEL, now=NOW),
    ],
)
def test_item_round_trip_is_exact(record: PredictionRecord) -> None:
    assert PredictionRecord.from_item(record.to_item()) == record


def test_from_item_accepts_what_dynamodb_returns() -> None:
    # DynamoDB normalises numbers (no trailing zeros) and adds attributes of its own.
    item = classified().to_item()
    item["score"] = Decimal("0.812346")
    item["top_k"][1]["score"] = Decimal("0.1")
    item["top_k"][2]["score"] = Decimal("0")
    item["bytes"] = Decimal("204800")
    item["ttl"] = Decimal(1_900_000_000)
    assert PredictionRecord.from_item(item) == classified()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"status": None}, "lacks status"),
        ({"image": ""}, "lacks image"),
        ({"status": "weird"}, "unknown status"),
        ({"bytes": Decimal("1.5")}, "not a whole number"),
        ({"top_k": [{"label": "x"}]}, "lacks 'index'"),
        ({"top_k": ["x"]}, "top_k entry"),
    ],
)
def test_from_item_rejects_malformed_items(change: dict[str, Any], words: str) -> None:
    item = {**classified().to_item(), **change}
    with pytest.raises(ValueError, match=words):
        PredictionRecord.from_item(item)


# ---- JSON document ---------------------------------------------------------------------


def test_document_is_json_with_stable_key_order() -> None:
    doc = classified().to_document()
    assert list(doc) == [
        "image", "model", "status", "processed_at", "etag", "version_id", "sequencer",
        "bytes", "width", "height", "format", "label", "score", "top_k", "output_key",
        "error", "fetch_ms", "decode_ms", "inference_ms", "event_to_record_ms", "output_line",
    ]
    text = json.dumps(doc)
    assert json.loads(text) == doc
    assert doc["score"] == 0.812346
    assert doc["top_k"][0] == {"label": "seashore", "index": 978, "score": 0.812346}
    assert doc["error"] is None
    assert json.dumps(classified().to_document()) == text  # byte-identical re-runs


# ---- properties ------------------------------------------------------------------------

scores = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
maybe_int = st.none() | st.integers(min_value=0, max_value=2**53)
maybe_text = st.none() | st.text(min_size=1, max_size=20)


@st.composite
def records(draw: st.DrawFn) -> PredictionRecord:
    statuses: list[Status] = ["classified", "rejected", "gone"]
    status = draw(st.sampled_from(statuses))
    top_k = tuple(
        LabelScore(draw(st.text(min_size=1, max_size=10)), draw(st.integers(0, 999)), s)
        for s in draw(st.lists(scores, max_size=5))
    )
    return PredictionRecord(
        image="s3://b/" + draw(st.text(min_size=1, max_size=30)),
        model=draw(st.text(min_size=1, max_size=20)),
        status=status,
        processed_at=utc_now_iso(draw(st.datetimes(timezones=st.just(UTC)))),
        etag=draw(maybe_text),
        version_id=draw(maybe_text),
        sequencer=draw(maybe_text),
        bytes=draw(maybe_int),
        width=draw(maybe_int),
        height=draw(maybe_int),
        format=draw(maybe_text),
        label=draw(maybe_text),
        score=draw(st.none() | scores),
        top_k=top_k,
        output_key=draw(maybe_text),
        error=draw(maybe_text),
    )


@given(record=records())
def test_any_record_round_trips_through_an_item(record: PredictionRecord) -> None:
    item = record.to_item()
    assert not any(isinstance(v, float) for v in walk(item))
    assert PredictionRecord.from_item(item) == record


@given(record=records())
def test_any_record_document_is_json(record: PredictionRecord) -> None:
    doc = record.to_document()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc


@given(score=scores)
def test_round_score_is_idempotent_and_close(score: float) -> None:
    once = round_score(score)
    assert round_score(once) == once
    assert abs(once - score) <= 5e-7 + 1e-9 * abs(score)


# ---- timings -----------------------------------------------------------------------------


def test_timings_go_into_the_item_and_the_document_and_come_back() -> None:
    ref = ObjectRef(bucket="b", key="k.jpg", etag="e", event_time="2026-11-22T01:02:01.000Z")
    rec = classified_record(ref, MODEL, PREDICTION, OUT_KEY, now=NOW,
                            timings=ImageTimings(fetch_ms=12.345, decode_ms=28.96,
                                                 inference_ms=4.04))
    assert (rec.fetch_ms, rec.decode_ms, rec.inference_ms) == (12.3, 29.0, 4.0)
    assert rec.event_to_record_ms == 2457  # 01:02:01.000 -> 01:02:03.456789, rounded
    item = rec.to_item()
    assert item["fetch_ms"] == Decimal("12.3") and item["event_to_record_ms"] == Decimal(2457)
    assert PredictionRecord.from_item(item) == rec
    doc = rec.to_document()
    assert (doc["fetch_ms"], doc["decode_ms"], doc["inference_ms"],
            doc["event_to_record_ms"]) == (12.3, 29.0, 4.0, 2457)


def test_items_written_before_the_timings_existed_stay_readable() -> None:
    old = classified().to_item()
    for name in ("fetch_ms", "decode_ms", "inference_ms", "event_to_record_ms"):
        old.pop(name, None)
    rec = PredictionRecord.from_item(old)
    assert (rec.fetch_ms, rec.decode_ms, rec.inference_ms, rec.event_to_record_ms) == (
        None, None, None, None)
    assert rec.label == "seashore"


def test_event_to_record_needs_an_event_time_and_never_goes_negative() -> None:
    from pipeline.records import event_to_record_ms

    assert classified().event_to_record_ms is None  # REF has no event time (a backfill)
    assert event_to_record_ms(None, NOW) is None
    assert event_to_record_ms("not a time", NOW) is None
    assert event_to_record_ms("2026-11-22T01:02:04.000Z", NOW) == 0  # S3's clock ahead
    late = ObjectRef(bucket="b", key="k", event_time="2026-11-22T01:01:03.456789Z")
    assert rejected_record(late, MODEL, "not an image", now=NOW).event_to_record_ms == 60000


def test_records_load_without_the_classifier_or_numpy() -> None:
    """Reading and writing records (the summary function, reconcile, the report) needs no
    inference code: a record round trip in a fresh interpreter loads neither."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "from pipeline.records import PredictionRecord\n"
        "from pipeline.prediction import LabelScore\n"
        "r = PredictionRecord(image='s3://b/k', model='m@1', status='classified',\n"
        "                     processed_at='2026-01-01T00:00:00.000Z', label='cat', score=0.5,\n"
        "                     top_k=(LabelScore('cat', 1, 0.5),))\n"
        "assert PredictionRecord.from_item(r.to_item()) == r\n"
        "loaded = [m for m in ('pipeline.classifier', 'numpy', 'PIL') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, check=True, env={"PYTHONPATH": str(root)})
    assert done.stdout.strip() == ""
