"""The local stack's mends of moto's S3 events (`imgpipe.local.s3_events`), in moto
in-process: what a queue receives for an upload is what S3 sends."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from tests.functional.conftest import BUCKET


@pytest.fixture
def mended(mocked_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.s3 import notifications

    from imgpipe.local.s3_events import one_event_per_multipart_upload

    # monkeypatch puts moto's own send_event back after the test.
    monkeypatch.setattr(notifications, "send_event", notifications.send_event)
    one_event_per_multipart_upload()


def event_names(sqs: object, url: str) -> list[str]:
    names: list[str] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)  # type: ignore[attr-defined]
        if not got.get("Messages"):
            return names
        for m in got["Messages"]:
            body = json.loads(m["Body"])
            names.extend(r["eventName"] for r in body.get("Records", []))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])  # type: ignore[attr-defined]



def _queue(sqs: Any, name: str) -> tuple[str, str]:
    """A new queue's URL and ARN."""
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]

def test_a_multipart_upload_is_announced_once_as_s3_does(mended: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    url, arn = _queue(sqs, "events")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    event_names(sqs, url)  # the s3:TestEvent

    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="incoming/big.jpg")
    part = s3.upload_part(Bucket=BUCKET, Key="incoming/big.jpg", PartNumber=1,
                          UploadId=upload["UploadId"], Body=b"\xff\xd8" * 1000)
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key="incoming/big.jpg", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert event_names(sqs, url) == ["ObjectCreated:CompleteMultipartUpload"]

    s3.put_object(Bucket=BUCKET, Key="incoming/small.jpg", Body=b"\xff\xd8")
    assert event_names(sqs, url) == ["ObjectCreated:Put"]


def test_eventbridge_events_carry_s3s_etag_spelling(
        mocked_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 spells the field `etag` in EventBridge events (tests/events has AWS's example);
    moto sends `eTag`. The core reads AWS's spelling only, so the mend gives it that."""
    from moto.events.models import Rule

    from imgpipe.local.s3_events import stamp_eventbridge_sequencers
    from pipeline.events import parse_message_body

    monkeypatch.setattr(Rule, "send_to_targets", Rule.send_to_targets)
    stamp_eventbridge_sequencers()
    s3 = boto3.client("s3", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    events = boto3.client("events", region_name="us-east-1")
    url, arn = _queue(sqs, "bridge")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "EventBridgeConfiguration": {}})
    events.put_rule(Name="created", EventPattern=json.dumps({
        "source": ["aws.s3"], "detail-type": ["Object Created"]}))
    events.put_targets(Rule="created", Targets=[{"Id": "q", "Arn": arn}])

    etag = s3.put_object(Bucket=BUCKET, Key="incoming/a.jpg", Body=b"\xff\xd8")["ETag"]
    (message,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    obj = json.loads(message["Body"])["detail"]["object"]
    assert "eTag" not in obj and obj["etag"] == etag.strip('"')
    (ref,) = parse_message_body(message["Body"]).refs
    assert ref.etag == etag.strip('"')
