"""IMGPIPE_OUTPUT_DOCUMENTS: one document per image (default), one JSON Lines file per
invocation with each record pointing at its line, or records only."""

from __future__ import annotations

import json
from typing import Any

import pytest

import handlers.ingest
from imgpipe.reconcile import reconcile
from pipeline.classifier import Classifier
from pipeline.errors import ConfigError, TransientError
from pipeline.factory import build_service
from pipeline.settings import Settings
from tests.functional.conftest import (
    BUCKET,
    MODEL,
    TABLE,
    Clients,
    Context,
    Harness,
    s3_event,
    sample,
    sqs_event,
)

PHOTOS = ("coffee.jpg", "chelsea.jpg", "rocket.jpg")


def use_mode(harness: Harness, aws: Clients, classifier: Classifier,
             monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    service = build_service(Settings(table_name=TABLE, output_documents=mode), clients=aws,
                            classifier=classifier)
    monkeypatch.setattr(handlers.ingest, "_service", service)
    harness.service = service


def ingest(harness: Harness, *keys_and_data: tuple[str, bytes]) -> dict[str, Any]:
    objs = [harness.upload(k, d) for k, d in keys_and_data]
    event, _ = sqs_event(s3_event(*objs))
    return handlers.ingest.handler(event, Context())  # type: ignore[no-any-return]


def check(aws: Clients) -> Any:
    return reconcile(aws.s3, aws.dynamodb, bucket=BUCKET, input_prefix="incoming/",
                     output_prefix="predictions/", table=TABLE, model=MODEL)


def test_batch_mode_writes_one_json_lines_file_and_each_item_points_at_its_line(
    harness: Harness, aws: Clients, classifier: Classifier, monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_mode(harness, aws, classifier, monkeypatch, "batch")
    files = [(f"incoming/{n}", sample(n)) for n in PHOTOS]
    response = ingest(harness, *files, ("incoming/notes.txt", b"not a photo"))
    assert response == {"batchItemFailures": []}
    [batch_key] = harness.outputs()  # one PUT for the three photos, none for the text
    assert batch_key.startswith(f"predictions/{MODEL}/_batches/") and batch_key.endswith(
        ".jsonl")
    lines = harness.s3.get_object(Bucket=BUCKET, Key=batch_key)["Body"].read().decode()
    docs = [json.loads(line) for line in lines.splitlines()]
    assert len(docs) == 3
    for name in PHOTOS:
        rec = harness.record(f"incoming/{name}")
        assert rec is not None and rec["output_key"] == batch_key
        doc = docs[int(rec["output_line"]) - 1]
        assert doc["image"] == rec["image"] and doc["label"] == rec["label"]
        assert doc["output_line"] == rec["output_line"]
    rejected = harness.record("incoming/notes.txt")
    assert rejected is not None and "output_key" not in rejected
    assert check(aws).ok, check(aws).problems()

    # A re-upload of one photo: a new file with one line; the item points there now, and
    # the first file (still naming the other two) is no orphan.
    ingest(harness, ("incoming/coffee.jpg", sample("coffee.jpg") + b"\0"))
    rec = harness.record("incoming/coffee.jpg")
    assert rec is not None and rec["output_key"] != batch_key and rec["output_line"] == 1
    assert len(harness.outputs()) == 2
    report = check(aws)
    assert report.ok, report.problems()


def test_none_mode_writes_records_only(
    harness: Harness, aws: Clients, classifier: Classifier, monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_mode(harness, aws, classifier, monkeypatch, "none")
    assert ingest(harness, *[(f"incoming/{n}", sample(n)) for n in PHOTOS]) == {
        "batchItemFailures": []}
    assert harness.outputs() == []
    for name in PHOTOS:
        rec = harness.record(f"incoming/{name}")
        assert rec is not None and rec["status"] == "classified"
        assert "output_key" not in rec and "output_line" not in rec
    # A redelivery finds the records done and writes no document either.
    ingest(harness, *[(f"incoming/{n}", sample(n)) for n in PHOTOS[:1]])
    assert harness.outputs() == []
    assert check(aws).ok


def test_a_batch_file_that_cannot_be_written_fails_its_images_and_writes_no_record(
    harness: Harness, aws: Clients, classifier: Classifier, monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_mode(harness, aws, classifier, monkeypatch, "batch")

    def slow_down(*args: Any, **kwargs: Any) -> None:
        raise TransientError("writing the batch file: SlowDown, will retry")

    monkeypatch.setattr(harness.service.store, "put_lines", slow_down)
    objs = [harness.upload(f"incoming/{n}", sample(n)) for n in PHOTOS[:2]]
    event, ids = sqs_event(s3_event(objs[0]), s3_event(objs[1]))
    response = handlers.ingest.handler(event, Context())
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(ids)
    assert harness.record(f"incoming/{PHOTOS[0]}") is None  # no record points nowhere


def test_an_unknown_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="per-image, batch, none"):
        Settings.from_env({"IMGPIPE_OUTPUT_DOCUMENTS": "sometimes"})
    assert Settings().output_documents == "per-image"
