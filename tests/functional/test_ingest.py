"""RELIABILITY.md "Delivery" and "Faults", line by line, through the real ingest handler
(moto in-process, the real model)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import handlers.ingest
from pipeline.errors import ModelError, TransientError
from pipeline.ingest import process_messages
from tests.functional.conftest import (
    BUCKET,
    MODEL,
    TABLE,
    Context,
    Harness,
    s3_event,
    sample,
    sqs_event,
)


def invoke(*bodies: str, remaining_ms: int = 120_000) -> tuple[dict[str, Any], list[str]]:
    event, ids = sqs_event(*bodies)
    return handlers.ingest.handler(event, Context(remaining_ms)), ids


def failed_ids(response: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def test_a_photo_gets_one_record_and_one_output_document(harness: Harness) -> None:
    obj = harness.upload("incoming/coffee.jpg", sample("coffee.jpg"))
    response, _ = invoke(s3_event(obj))
    assert response == {"batchItemFailures": []}
    rec = harness.record("incoming/coffee.jpg")
    assert rec is not None
    assert rec["status"] == "classified"
    assert rec["label"] == "espresso"
    assert rec["label_key"] == f"{MODEL}#espresso"
    assert rec["etag"] == obj["etag"]
    assert (rec["width"], rec["height"], rec["format"]) == (600, 400, "JPEG")
    assert len(rec["top_k"]) == 5
    assert harness.outputs() == [rec["output_key"]]
    doc = json.loads(harness.s3.get_object(Bucket=BUCKET, Key=rec["output_key"])["Body"].read())
    assert doc["image"] == f"s3://{BUCKET}/incoming/coffee.jpg"
    assert doc["label"] == "espresso" and doc["model"] == MODEL


def test_each_record_and_document_says_where_the_images_time_went(harness: Harness) -> None:
    from datetime import UTC, datetime, timedelta

    from pipeline.records import utc_now_iso

    sent = datetime.fromisoformat(utc_now_iso(datetime.now(UTC) - timedelta(seconds=3))
                                  .replace("Z", "+00:00"))  # to the millisecond, as S3 says
    objs = [harness.upload(f"incoming/{n}", sample(n)) for n in ("coffee.jpg", "chelsea.jpg")]
    text = harness.upload("incoming/notes.txt", b"not a photo")
    response, _ = invoke(s3_event(*objs, text, event_time=utc_now_iso(sent)))
    assert response == {"batchItemFailures": []}
    recs = [harness.record(f"incoming/{n}") for n in ("coffee.jpg", "chelsea.jpg")]
    for rec in recs:
        assert rec is not None and rec["status"] == "classified"
        for name in ("fetch_ms", "decode_ms", "inference_ms"):
            assert rec[name] > 0, name
        written = datetime.fromisoformat(rec["processed_at"].replace("Z", "+00:00"))
        expected = (written - sent).total_seconds() * 1000
        latency = int(rec["event_to_record_ms"])
        assert latency >= 3000 and abs(latency - expected) <= 1.5  # processed_at: whole ms
        doc = json.loads(harness.s3.get_object(Bucket=BUCKET,
                                               Key=rec["output_key"])["Body"].read())
        for name in ("fetch_ms", "decode_ms", "inference_ms", "event_to_record_ms"):
            assert doc[name] == float(rec[name]), name
    rejected = harness.record("incoming/notes.txt")
    assert rejected is not None and rejected["status"] == "rejected"
    assert rejected["event_to_record_ms"] >= 3000 and "inference_ms" not in rejected


def test_the_same_event_twice_in_one_batch_and_redelivered_later(harness: Harness) -> None:
    obj = harness.upload("incoming/cat.jpg", sample("chelsea.jpg"))
    body = s3_event(obj)
    response, _ = invoke(body, body)
    assert failed_ids(response) == []
    assert harness.images_classified() == 1
    first = harness.record("incoming/cat.jpg")

    response, _ = invoke(body)  # redelivery later
    assert failed_ids(response) == []
    assert harness.images_classified() == 1, "a duplicate must not run inference again"
    assert harness.record("incoming/cat.jpg") == first, "a duplicate must not write again"
    assert len(harness.outputs()) == 1


def test_a_second_identical_upload_is_not_recomputed(harness: Harness) -> None:
    data = sample("rocket.jpg")
    first = harness.upload("incoming/rocket.jpg", data)
    invoke(s3_event(first))
    second = harness.upload("incoming/rocket.jpg", data)  # same bytes, same ETag
    assert second["etag"] == first["etag"]
    invoke(s3_event(second))
    assert harness.images_classified() == 1
    assert len(harness.all_records()) == 1


def test_events_out_of_order_the_newest_result_stands(harness: Harness) -> None:
    old = harness.upload("incoming/photo.jpg", sample("coffee.jpg"))
    new = harness.upload("incoming/photo.jpg", sample("chelsea.jpg"))
    old_event = s3_event({**old, "sequencer": "0065A0000000000001"})
    new_event = s3_event({**new, "sequencer": "0065A0000000000002"})
    response, _ = invoke(new_event)
    assert failed_ids(response) == []
    response, _ = invoke(old_event)  # the older event arrives last
    assert failed_ids(response) == []
    rec = harness.record("incoming/photo.jpg")
    assert rec is not None
    assert rec["etag"] == new["etag"]
    assert "cat" in rec["label"]
    assert harness.images_classified() == 1, "the stale event must not even be read"


def test_both_versions_in_one_batch_without_sequencers(harness: Harness) -> None:
    old = harness.upload("incoming/photo.jpg", sample("coffee.jpg"))
    new = harness.upload("incoming/photo.jpg", sample("chelsea.jpg"))
    response, _ = invoke(s3_event(new), s3_event(old))
    assert failed_ids(response) == []
    rec = harness.record("incoming/photo.jpg")
    assert rec is not None and rec["etag"] == new["etag"]
    assert len(harness.all_records()) == 1


def test_object_overwritten_between_event_and_read_is_superseded(harness: Harness) -> None:
    old = harness.upload("incoming/photo.jpg", sample("coffee.jpg"))
    new = harness.upload("incoming/photo.jpg", sample("chelsea.jpg"))
    response, _ = invoke(s3_event(old))  # the event for the old content, read after overwrite
    assert failed_ids(response) == [], "412 means superseded, not an error"
    assert harness.record("incoming/photo.jpg") is None
    invoke(s3_event(new))
    rec = harness.record("incoming/photo.jpg")
    assert rec is not None and rec["etag"] == new["etag"]


def test_object_deleted_before_it_is_read_gets_a_gone_record(harness: Harness) -> None:
    obj = harness.upload("incoming/deleted.jpg", sample("coffee.jpg"))
    harness.s3.delete_object(Bucket=BUCKET, Key="incoming/deleted.jpg")
    response, _ = invoke(s3_event(obj))
    assert failed_ids(response) == [], "gone is final: no retry loop"
    rec = harness.record("incoming/deleted.jpg")
    assert rec is not None and rec["status"] == "gone"
    assert harness.outputs() == []


def test_s3_test_event_is_acknowledged_and_skipped(harness: Harness, load_event: Any) -> None:
    body = json.dumps(load_event("s3_test_event"))
    response, _ = invoke(body)
    assert response == {"batchItemFailures": []}
    assert harness.all_records() == []


def test_one_message_with_several_records_processes_all(harness: Harness) -> None:
    a = harness.upload("incoming/a.jpg", sample("coffee.jpg"))
    b = harness.upload("incoming/b.jpg", sample("rocket.jpg"))
    c = harness.upload("incoming/c.jpg", sample("chelsea.jpg"))
    response, _ = invoke(s3_event(a, b, c))
    assert failed_ids(response) == []
    assert {harness.record(k)["status"] for k in ("incoming/a.jpg", "incoming/b.jpg",
                                                   "incoming/c.jpg")} == {"classified"}


@pytest.mark.parametrize("key", [
    "incoming/holiday photos/beach day.jpg",
    "incoming/a+b=c.jpg",
    "incoming/100% real.jpg",
    "incoming/café/crème brûlée 東京.jpg",
    "incoming/2026/11/22/deep/er/still/photo.jpg",
    "incoming/UPPER.JPG",
    "incoming/photo.jpeg",
    "incoming/no-extension",
    "incoming/wrong-extension.png",
])
def test_odd_keys_are_decoded_and_the_content_decides(harness: Harness, key: str) -> None:
    obj = harness.upload(key, sample("coffee.jpg"))
    response, _ = invoke(s3_event(obj))
    assert failed_ids(response) == []
    rec = harness.record(key)
    assert rec is not None, f"no record under the decoded key {key!r}"
    assert rec["status"] == "classified" and rec["label"] == "espresso"


def test_folder_markers_and_non_images_never_crash_the_batch(harness: Harness) -> None:
    folder = harness.upload("incoming/photos/", b"")
    text = harness.upload("incoming/notes.txt", b"hello, this is not a photo\n")
    video = harness.upload("incoming/clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    good = harness.upload("incoming/ok.jpg", sample("coffee.jpg"))
    response, _ = invoke(s3_event(folder), s3_event(text, video), s3_event(good))
    assert failed_ids(response) == []
    assert harness.record("incoming/photos/") is None
    txt = harness.record("incoming/notes.txt")
    mp4 = harness.record("incoming/clip.mp4")
    assert txt is not None and txt["status"] == "rejected" and "not an image" in txt["error"]
    assert mp4 is not None and mp4["status"] == "rejected" and "video" in mp4["error"]
    assert harness.record("incoming/ok.jpg")["status"] == "classified"
    assert len(harness.outputs()) == 1, "only classified records get an output document"


class FlakyS3:
    """Wraps the S3 client: get_object fails for chosen keys until `heal()`."""

    def __init__(self, inner: Any, failing: set[str], code: str = "SlowDown",
                 status: int = 503, message: str = "Please reduce your request rate.") -> None:
        self.inner = inner
        self.failing = failing
        self.code = code
        self.status = status
        self.message = message
        self.calls = 0

    def heal(self) -> None:
        self.failing = set()

    def get_object(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        self.calls += 1
        if kwargs["Key"] in self.failing:
            raise ClientError({"Error": {"Code": self.code, "Message": self.message},
                               "ResponseMetadata": {"HTTPStatusCode": self.status}},
                              "GetObject")
        return self.inner.get_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_transient_failures_report_exactly_those_messages(harness: Harness) -> None:
    ok = harness.upload("incoming/ok.jpg", sample("coffee.jpg"))
    bad = harness.upload("incoming/slow.jpg", sample("rocket.jpg"))
    flaky = FlakyS3(harness.s3, {"incoming/slow.jpg"})
    harness.service.store.client = flaky  # type: ignore[attr-defined]
    response, ids = invoke(s3_event(ok), s3_event(bad))
    assert failed_ids(response) == [ids[1]]
    assert harness.record("incoming/slow.jpg") is None, "a transient fault is not a rejection"
    flaky.heal()
    response, _ = invoke(s3_event(bad))  # SQS redelivers it; the fault has cleared
    assert failed_ids(response) == []
    assert harness.record("incoming/slow.jpg")["status"] == "classified"


def test_a_kms_denial_is_a_failure_with_a_sentence_never_a_gone_record(
        harness: Harness) -> None:
    """An SSE-KMS bucket whose key the role may not use: S3 answers 403 AccessDenied (its
    answer, tests/events/s3_error_access_denied_kms.xml). Every receive fails the message
    (SQS then moves it to the DLQ, whose alarm fires); no record says the photo is gone;
    once the key is granted, the redelivery classifies it."""
    import xml.etree.ElementTree as ET

    from tests.functional.conftest import ROOT

    answer = ET.parse(ROOT / "tests" / "events" / "s3_error_access_denied_kms.xml").getroot()
    obj = harness.upload("incoming/locked.jpg", sample("coffee.jpg"))
    denied = FlakyS3(harness.s3, {"incoming/locked.jpg"}, code=str(answer.findtext("Code")),
                     status=403, message=str(answer.findtext("Message")))
    harness.service.store.client = denied  # type: ignore[attr-defined]
    for _receive in range(5):  # maxReceiveCount: each receive is a batch item failure
        response, ids = invoke(s3_event(obj))
        assert failed_ids(response) == ids
        assert harness.record("incoming/locked.jpg") is None, "a denial is never a record"
    assert harness.outputs() == []
    denied.heal()  # KmsKeyArn set: the role may decrypt now; `imgpipe redrive`
    response, _ = invoke(s3_event(obj))
    assert failed_ids(response) == []
    assert harness.record("incoming/locked.jpg")["status"] == "classified"


def test_a_kms_denial_says_which_key_and_action(
        harness: Harness) -> None:
    from pipeline.events import ObjectRef
    from tests.functional.conftest import ROOT

    text = (ROOT / "tests" / "events" / "s3_error_access_denied_kms.xml").read_text()
    message = text.split("<Message>")[1].split("</Message>")[0]
    obj = harness.upload("incoming/locked.jpg", sample("coffee.jpg"))
    harness.service.store.client = FlakyS3(  # type: ignore[attr-defined]
        harness.s3, {"incoming/locked.jpg"}, code="AccessDenied", status=403, message=message)
    ref = ObjectRef(BUCKET, "incoming/locked.jpg", etag=obj["etag"])
    [outcome] = harness.service.process([ref])
    assert outcome.status == "failed"
    assert "kms:Decrypt" in outcome.detail and (
        "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        in outcome.detail) and "KmsKeyArn" in outcome.detail


def test_an_all_failed_batch_reports_every_message(harness: Harness) -> None:
    objs = [harness.upload(f"incoming/{i}.jpg", sample("coffee.jpg")) for i in range(3)]
    harness.service.store.client = FlakyS3(  # type: ignore[attr-defined]
        harness.s3, {o["key"] for o in objs}, code="InternalError")
    response, ids = invoke(*(s3_event(o) for o in objs))
    assert sorted(failed_ids(response)) == sorted(ids)
    assert all(mid for mid in failed_ids(response))


def test_dynamodb_throttling_is_retried_then_converges(harness: Harness) -> None:
    obj = harness.upload("incoming/t.jpg", sample("coffee.jpg"))
    sink = harness.service.sink
    real_put = sink.put
    state = {"fail": True}

    def throttled_put(record: Any, expected: Any) -> bool:
        if state["fail"]:
            raise TransientError("writing to imgpipe-predictions: "
                                 "ProvisionedThroughputExceededException, will retry")
        return real_put(record, expected)

    sink.put = throttled_put  # type: ignore[method-assign]
    response, ids = invoke(s3_event(obj))
    assert failed_ids(response) == ids
    assert harness.record("incoming/t.jpg") is None
    state["fail"] = False
    response, _ = invoke(s3_event(obj))
    assert failed_ids(response) == []
    assert harness.record("incoming/t.jpg")["status"] == "classified"
    assert len(harness.outputs()) == 1, "the retry overwrote the same output object"


def test_crash_between_the_record_and_the_document_yields_one_of_each(
        harness: Harness) -> None:
    obj = harness.upload("incoming/c.jpg", sample("chelsea.jpg"))
    store = harness.service.store
    real_put_json = store.put_json

    def crash(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("Lambda crashed between the two writes")

    store.put_json = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        invoke(s3_event(obj))  # the invocation dies: SQS redelivers the whole batch
    assert harness.outputs() == [] and harness.record("incoming/c.jpg") is not None
    store.put_json = real_put_json  # type: ignore[method-assign]
    response, _ = invoke(s3_event(obj))
    assert failed_ids(response) == []
    assert harness.outputs() == [f"predictions/{MODEL}/incoming/c.jpg.json"]
    assert harness.record("incoming/c.jpg")["status"] == "classified"
    assert harness.images_classified() == 1, "the redelivery only wrote the document"


def test_close_to_the_timeout_nothing_new_starts_and_the_rest_fail(harness: Harness) -> None:
    invoke()  # the container's first invocation: its context tells the timeout (120 s)
    objs = [harness.upload(f"incoming/{i}.jpg", sample("coffee.jpg")) for i in range(2)]
    response, ids = invoke(*(s3_event(o) for o in objs), remaining_ms=2_000)
    assert sorted(failed_ids(response)) == sorted(ids)
    assert harness.all_records() == []


def test_a_short_function_timeout_keeps_working_time_with_the_default_margin(
        harness: Harness) -> None:
    obj = harness.upload("incoming/short.jpg", sample("coffee.jpg"))
    response, _ = invoke(s3_event(obj), remaining_ms=9_990)  # FunctionTimeout 10 s
    assert failed_ids(response) == []
    assert harness.record("incoming/short.jpg")["status"] == "classified"


def test_a_margin_that_leaves_no_working_time_fails_every_invocation_with_a_sentence(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import ConfigError

    settings = harness.service.settings.with_(timeout_margin_ms=10_000)
    monkeypatch.setattr(harness.service, "settings", settings)
    obj = harness.upload("incoming/never.jpg", sample("coffee.jpg"))
    for _ in range(2):  # not only the first: nothing is ever processed with this setting
        with pytest.raises(ConfigError, match=r"timeout of 10 s leaves no working time after "
                           r"IMGPIPE_TIMEOUT_MARGIN_MS=10000.*at least 11 s"):
            invoke(s3_event(obj), remaining_ms=9_990)
    assert harness.all_records() == []


def test_unreadable_message_is_reported_so_it_reaches_the_dlq(harness: Harness) -> None:
    obj = harness.upload("incoming/ok.jpg", sample("coffee.jpg"))
    response, ids = invoke("this is not json", s3_event(obj))
    assert failed_ids(response) == [ids[0]]
    assert harness.record("incoming/ok.jpg")["status"] == "classified"


def test_a_corrupt_model_fails_fast_and_rejects_nothing(tmp_path: Any, aws: Any) -> None:
    import shutil

    from pipeline.factory import build_service
    from pipeline.modelstore import default_model_dir
    from pipeline.settings import Settings

    for name in ("manifest.json", "labels.txt", "efficientnet_lite0.onnx"):
        shutil.copy(default_model_dir() / name, tmp_path / name)
    with open(tmp_path / "efficientnet_lite0.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00corrupt\x00")
    with pytest.raises(ModelError, match="corrupt"):
        build_service(Settings(model_source=str(tmp_path)), clients=aws)
    with pytest.raises(ModelError, match="does not exist"):
        build_service(Settings(model_source=str(tmp_path / "missing")), clients=aws)
    assert aws.dynamodb.scan(TableName="imgpipe-predictions")["Items"] == []


def test_model_from_s3_is_downloaded_once_and_verified(tmp_path: Any, aws: Any) -> None:
    from pipeline.modelstore import default_model_dir, resolve_model

    aws.s3.create_bucket(Bucket="models")
    for name in ("manifest.json", "labels.txt", "efficientnet_lite0.onnx"):
        aws.s3.upload_file(str(default_model_dir() / name), "models", f"lite0/v1/{name}")
    cache = tmp_path / "cache"
    manifest = resolve_model("s3://models/lite0/v1", cache, aws.s3)
    assert manifest.model_id == MODEL
    assert manifest.onnx_path.is_file() and str(manifest.onnx_path).startswith(str(cache))
    mtime = manifest.onnx_path.stat().st_mtime_ns
    again = resolve_model("s3://models/lite0/v1/", cache, aws.s3)
    assert again.onnx_path.stat().st_mtime_ns == mtime, "second container start: no download"
    aws.s3.put_object(Bucket="models", Key="lite0/v2/manifest.json",
                      Body=(default_model_dir() / "manifest.json").read_bytes())
    with pytest.raises(ModelError, match="cannot download"):
        resolve_model("s3://models/lite0/v2", cache, aws.s3)


def test_the_writes_of_different_images_overlap(harness: Harness) -> None:
    # Each put waits until another one is in flight too: this passes only if the record
    # writes of a batch run concurrently (they are round trips, not CPU work).
    import threading

    a = harness.upload("incoming/a.jpg", sample("coffee.jpg"))
    b = harness.upload("incoming/b.jpg", sample("rocket.jpg"))
    sink = harness.service.sink
    real_put = sink.put
    barrier = threading.Barrier(2, timeout=10)

    def put_together(record: Any, expected: Any) -> bool:
        barrier.wait()
        return real_put(record, expected)

    sink.put = put_together  # type: ignore[method-assign]
    response, _ = invoke(s3_event(a), s3_event(b))
    assert failed_ids(response) == []
    assert {harness.record(k)["status"] for k in ("incoming/a.jpg", "incoming/b.jpg")} == {
        "classified"}


def test_an_image_overwritten_by_a_non_image_loses_its_old_document(harness: Harness) -> None:
    from imgpipe.reconcile import reconcile

    first = harness.upload("incoming/x.jpg", sample("coffee.jpg"))
    invoke(s3_event(first))
    assert harness.outputs() == [f"predictions/{MODEL}/incoming/x.jpg.json"]
    second = harness.upload("incoming/x.jpg", b"this is not a photo any more\n")
    response, _ = invoke(s3_event(second))
    assert failed_ids(response) == []
    record = harness.record("incoming/x.jpg")
    assert record["status"] == "rejected" and record["etag"] == second["etag"]
    assert harness.outputs() == [], "the espresso document of the old image is gone"
    report = reconcile(harness.s3, harness.clients.dynamodb, bucket=BUCKET,
                       input_prefix="incoming/", output_prefix="predictions/", table=TABLE,
                       model=MODEL)
    assert report.ok and report.orphaned_outputs == (), report.problems()


def lose_the_first_reply(client: Any, operation: str) -> list[str]:
    """Botocore sends `operation` to moto, moto applies it, and its reply is lost (a read
    timeout): botocore's own retry then sends the same request again. Returns a log of
    what happened to each attempt."""
    from botocore.exceptions import ReadTimeoutError
    from moto.core.models import botocore_stubber

    attempts: list[str] = []
    service = client.meta.service_model.service_id.hyphenize()

    def send(request: Any, **kwargs: Any) -> Any:
        if attempts:
            attempts.append("retried")
            return None  # moto's own handler answers
        response = botocore_stubber(request=request, **kwargs)
        attempts.append(f"applied, {response.status_code} lost")
        raise ReadTimeoutError(endpoint_url=request.url)

    client.meta.events.register_first(f"before-send.{service}.{operation}", send)
    return attempts


@pytest.mark.parametrize("earlier", [False, True], ids=["first-record", "over-an-older-one"])
def test_a_write_whose_reply_was_lost_finishes_its_document(
        harness: Harness, earlier: bool) -> None:
    """The conditional put is applied but its reply lost; botocore's retry then meets its
    own first attempt (ConditionalCheckFailed). The writer still owns the record, so the
    document must be written and the outcome be `classified`, not `skipped`."""
    if earlier:
        old = harness.upload("incoming/lost.jpg", sample("rocket.jpg"))
        response, _ = invoke(s3_event(old))
        assert failed_ids(response) == []
    obj = harness.upload("incoming/lost.jpg", sample("coffee.jpg"))
    attempts = lose_the_first_reply(harness.clients.dynamodb, "PutItem")
    event, ids = sqs_event(s3_event(obj))
    report = process_messages(harness.service,
        [(r["messageId"], r["body"]) for r in event["Records"]])
    assert attempts == ["applied, 200 lost", "retried"]
    assert report.failed_message_ids == []
    [(_, outcome)] = report.outcomes
    assert (outcome.status, outcome.detail) == ("classified", "")
    record = harness.record("incoming/lost.jpg")
    assert record is not None and record["etag"] == obj["etag"]
    assert harness.outputs() == [record["output_key"]]
    document = json.loads(harness.s3.get_object(
        Bucket=BUCKET, Key=record["output_key"])["Body"].read())
    assert (document["etag"], document["processed_at"], document["label"]) == (
        record["etag"], record["processed_at"], record["label"])


def test_a_writer_that_loses_to_an_equal_record_without_its_document_writes_it(
        harness: Harness) -> None:
    """Another writer stored this object's record first and stopped before its document:
    the writer that loses the conditional put to it still leaves the document there."""
    from dataclasses import replace

    obj = harness.upload("incoming/race.jpg", sample("chelsea.jpg"))
    sink = harness.service.sink
    real_put = sink.put

    def other_writer_first(record: Any, expected: Any) -> bool:
        other = replace(record, processed_at="2026-11-22T00:00:00.001Z")
        assert real_put(other, None)  # ... and that writer dies before its document
        sink.put = real_put  # type: ignore[method-assign]
        return real_put(record, expected)

    sink.put = other_writer_first  # type: ignore[method-assign]
    response, _ = invoke(s3_event(obj))
    assert failed_ids(response) == []
    record = harness.record("incoming/race.jpg")
    assert record is not None and record["processed_at"] == "2026-11-22T00:00:00.001Z"
    assert harness.outputs() == [record["output_key"]]
    document = json.loads(harness.s3.get_object(
        Bucket=BUCKET, Key=record["output_key"])["Body"].read())
    assert document["processed_at"] == record["processed_at"]


@pytest.mark.parametrize("poison", [
    '{"Records":' + "[" * 50_000,  # RecursionError in the JSON reader
    '{"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "k", "size": "'
    + "9" * 5_000 + '"}}, "eventName": "ObjectCreated:Put"}]}',  # an int past 4,300 digits
], ids=["deep-nesting", "huge-int"])
def test_a_body_that_breaks_the_reader_fails_only_its_own_message(
        harness: Harness, poison: str) -> None:
    obj = harness.upload("incoming/neighbour.jpg", sample("coffee.jpg"))
    response, ids = invoke(s3_event(obj), poison)
    assert failed_ids(response) == [ids[1]]
    assert harness.record("incoming/neighbour.jpg")["status"] == "classified"


def test_an_event_for_another_bucket_is_refused_and_records_nothing(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notification misrouted from another bucket: no `gone` record for an object this
    pipeline does not own (reconcile would never see it); the message fails, so it rests in
    the DLQ with its sentence in the log, and its neighbours are processed."""
    settings = harness.service.settings.with_(bucket=BUCKET)
    monkeypatch.setattr(harness.service, "settings", settings)
    logged: list[dict[str, Any]] = []
    real_error = harness.service.log.error

    def error(msg: str, *args: Any, **kwargs: Any) -> None:
        logged.append({"msg": msg, **kwargs.get("extra", {})})
        real_error(msg, *args, **kwargs)

    monkeypatch.setattr(harness.service.log, "error", error)
    mine = harness.upload("incoming/mine.jpg", sample("coffee.jpg"))
    foreign = {"key": "incoming/theirs.jpg", "etag": "1" * 32, "size": 10}
    response, ids = invoke(s3_event(foreign, bucket="someone-elses"), s3_event(mine))
    assert failed_ids(response) == [ids[0]]
    assert harness.record("incoming/mine.jpg")["status"] == "classified"
    images = {item["image"]["S"] for item in harness.all_records()}
    assert images == {f"s3://{BUCKET}/incoming/mine.jpg"}
    assert [entry["error"] for entry in logged] == [
        "the event names bucket someone-elses, but this pipeline reads only imgpipe-local "
        "(IMGPIPE_BUCKET): check which notifications target its queue"]


@pytest.mark.parametrize(("event", "got"), [
    ({}, "it was invoked with an empty object"),
    ({"bucket": "b", "key": "k"}, "it was invoked with an object with keys bucket, key"),
    ({"Records": [{"eventSource": "aws:s3"}]}, "record 0 of the event has no messageId"),
], ids=["empty", "not-sqs", "s3-event-directly"])
@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_an_invoke_with_an_event_that_is_not_sqs_says_what_it_takes(
        harness: Harness, event: dict[str, Any], got: str) -> None:
    from pipeline.errors import EventShapeError

    with pytest.raises(EventShapeError, match=got) as info:
        handlers.ingest.handler(event, Context())
    assert 'an SQS event as the ingest queue sends it: {"Records": [{"messageId"' in str(
        info.value)
    assert harness.all_records() == []
