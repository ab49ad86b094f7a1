"""An existing bucket (ExistingBucketName): the stack owns no bucket and sets no S3
notification; the bucket's EventBridge events reach the ingest queue through the
template's rule. The same stack subscribes an AlarmEmail to the alarm topic. Driven as a
user would: `imgpipe local --param ExistingBucketName=...`, then the aws CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, LocalProcess, start_local, stop_local

pytestmark = pytest.mark.e2e

BUCKET = "family-photos"
TABLE = "imgpipe-predictions"
MODEL = "efficientnet-lite0@1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcess]:
    lp = start_local(tmp_path_factory.mktemp("home"),
                     "--param", f"ExistingBucketName={BUCKET}",
                     "--param", "AlarmEmail=ops@example.com")
    try:
        # The user's bucket, with EventBridge turned on (what the README asks them to do).
        lp.aws("s3api", "create-bucket", "--bucket", BUCKET)
        lp.aws("s3api", "put-bucket-notification-configuration", "--bucket", BUCKET,
               "--notification-configuration", '{"EventBridgeConfiguration": {}}')
        yield lp
    finally:
        stop_local(lp)


def test_the_stack_owns_no_bucket_and_routes_through_eventbridge(stack: LocalProcess) -> None:
    banner = "".join(stack.output)
    assert f"aws s3api put-bucket-notification-configuration --bucket {BUCKET}" in banner
    buckets = [b["Name"] for b in stack.aws("s3api", "list-buckets")["Buckets"]]
    assert "imgpipe-local" not in buckets  # no bucket of its own
    resources = stack.aws("cloudformation", "describe-stack-resources",
                          "--stack-name", "imgpipe")["StackResources"]
    types = {r["ResourceType"] for r in resources}
    assert "AWS::S3::Bucket" not in types and "AWS::Events::Rule" in types
    (rule,) = stack.aws("events", "list-rules")["Rules"]
    assert json.loads(rule["EventPattern"]) == {
        "source": ["aws.s3"], "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [BUCKET]}, "object": {"key": [{"prefix": "incoming/"}]}}}
    (target,) = stack.aws("events", "list-targets-by-rule", "--rule", rule["Name"])["Targets"]
    queue_url = stack.aws("sqs", "get-queue-url", "--queue-name", "imgpipe-ingest",
                          "--endpoint-url", stack.endpoint)["QueueUrl"]
    attributes = stack.aws("sqs", "get-queue-attributes", "--queue-url", queue_url,
                           "--attribute-names", "All", "--endpoint-url", stack.endpoint)[
        "Attributes"]
    assert target["Arn"] == attributes["QueueArn"]
    (statement,) = json.loads(attributes["Policy"])["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == rule["Arn"]


def test_the_alarm_email_is_subscribed(stack: LocalProcess) -> None:
    (subscription,) = stack.aws("sns", "list-subscriptions")["Subscriptions"]
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("email", "ops@example.com")
    alarms = stack.aws("cloudwatch", "describe-alarms")["MetricAlarms"]
    assert len(alarms) == 6
    assert {a["AlarmActions"][0] for a in alarms} == {subscription["TopicArn"]}


def test_an_upload_to_the_existing_bucket_is_classified(
    stack: LocalProcess, tmp_path: Path
) -> None:
    stack.aws("s3", "cp", str(ROOT / "samples" / "coffee.jpg"),
              f"s3://{BUCKET}/incoming/kitchen/coffee.jpg")
    stack.aws("s3", "cp", str(ROOT / "samples" / "rocket.jpg"), f"s3://{BUCKET}/elsewhere/r.jpg")
    item = stack.wait_for_item(TABLE, f"s3://{BUCKET}/incoming/kitchen/coffee.jpg", MODEL)
    assert (item["status"]["S"], item["label"]["S"]) == ("classified", "espresso")
    document = tmp_path / "doc.json"
    stack.aws("s3", "cp", f"s3://{BUCKET}/{item['output_key']['S']}", str(document))
    assert json.loads(document.read_text())["label"] == "espresso"

    # An overwrite is classified again: its event is newer (S3's sequencer orders them).
    stack.aws("s3", "cp", str(ROOT / "samples" / "chelsea.jpg"),
              f"s3://{BUCKET}/incoming/kitchen/coffee.jpg")
    item = stack.wait_for_item(TABLE, f"s3://{BUCKET}/incoming/kitchen/coffee.jpg", MODEL,
                               until=lambda i: i["label"]["S"] != "espresso")
    assert item["label"]["S"] == "tiger cat"

    # A key with a space, a '+' and a '%' arrives intact (S3 URL-encodes it in the event).
    odd = "incoming/holiday photos/rocket+launch 100%.jpg"
    stack.aws("s3", "cp", str(ROOT / "samples" / "rocket.jpg"), f"s3://{BUCKET}/{odd}")
    item = stack.wait_for_item(TABLE, f"s3://{BUCKET}/{odd}", MODEL)
    assert item["status"]["S"] == "classified"

    # Nothing outside the input prefix was classified.
    scanned = stack.aws("dynamodb", "scan", "--table-name", TABLE)["Items"]
    assert sorted(i["image"]["S"] for i in scanned) == [
        f"s3://{BUCKET}/{odd}", f"s3://{BUCKET}/incoming/kitchen/coffee.jpg"]
