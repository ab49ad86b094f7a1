"""Functional fixtures: moto in-process (no network), the real model, the real handler."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest

from pipeline.aws import Clients
from pipeline.classifier import Classifier
from pipeline.factory import build_classifier, build_service
from pipeline.service import ClassificationService
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
BUCKET = "imgpipe-local"
TABLE = "imgpipe-predictions"
MODEL = "efficientnet-lite0@1"


@pytest.fixture(scope="session")
def classifier() -> Iterator[Classifier]:
    """The real default model; the session is cached, so this is built once per run."""
    clf = build_classifier(Settings())
    yield clf
    clf.close()


@pytest.fixture
def mocked_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto in-process, with fake credentials and nothing of the caller's AWS config."""
    from moto import mock_aws

    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


@pytest.fixture
def aws(mocked_aws: None) -> Iterator[Clients]:
    """The bucket and table every ingest test starts from (the template's schema)."""
    s3 = boto3.client("s3", region_name="us-east-1")
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    ddb.create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "image", "AttributeType": "S"},
            {"AttributeName": "model", "AttributeType": "S"},
            {"AttributeName": "label_key", "AttributeType": "S"},
            {"AttributeName": "score", "AttributeType": "N"},
        ],
        KeySchema=[{"AttributeName": "image", "KeyType": "HASH"},
                   {"AttributeName": "model", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[{
            "IndexName": "by-label",
            "KeySchema": [{"AttributeName": "label_key", "KeyType": "HASH"},
                          {"AttributeName": "score", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        }],
    )
    yield Clients(s3=s3, dynamodb=ddb)


@dataclass
class Harness:
    """The service over moto, plus helpers to upload, build events and read results."""

    clients: Clients
    service: ClassificationService
    forward_calls: list[int] = field(default_factory=list)

    @property
    def s3(self) -> Any:
        return self.clients.s3

    def upload(self, key: str, data: bytes) -> dict[str, Any]:
        resp = self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        return {"key": key, "etag": resp["ETag"].strip('"'), "size": len(data)}

    def record(self, key: str, model: str = MODEL) -> dict[str, Any] | None:
        from boto3.dynamodb.types import TypeDeserializer

        item = self.clients.dynamodb.get_item(
            TableName=TABLE, Key={"image": {"S": f"s3://{BUCKET}/{key}"},
                                  "model": {"S": model}}, ConsistentRead=True).get("Item")
        if item is None:
            return None
        de = TypeDeserializer()
        return {k: de.deserialize(v) for k, v in item.items()}

    def all_records(self) -> list[dict[str, Any]]:
        items = self.clients.dynamodb.scan(TableName=TABLE)["Items"]
        return items  # type: ignore[no-any-return]

    def outputs(self) -> list[str]:
        resp = self.s3.list_objects_v2(Bucket=BUCKET, Prefix="predictions/")
        return [o["Key"] for o in resp.get("Contents", [])]

    def images_classified(self) -> int:
        return sum(self.forward_calls)


def s3_event(*objects: dict[str, Any], bucket: str = BUCKET,
             event_time: str = "2026-11-22T00:00:00.000Z") -> str:
    """An S3 notification body as S3 sends it (keys quote_plus-encoded)."""
    records = []
    for obj in objects:
        o = {"key": quote_plus(obj["key"], safe="/"), "size": obj.get("size", 1),
             "eTag": obj.get("etag", "0" * 32)}
        if obj.get("sequencer"):
            o["sequencer"] = obj["sequencer"]
        records.append({
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": event_time, "eventName": "ObjectCreated:Put",
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "imgpipe",
                   "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                   "object": o},
        })
    return json.dumps({"Records": records})


def sqs_event(*bodies: str) -> tuple[dict[str, Any], list[str]]:
    ids = [str(uuid.uuid4()) for _ in bodies]
    records = [{
        "messageId": mid, "receiptHandle": f"rh-{mid}", "body": body,
        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
        "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:imgpipe-ingest",
        "awsRegion": "us-east-1",
    } for mid, body in zip(ids, bodies, strict=True)]
    return {"Records": records}, ids


class Context:
    function_name = "imgpipe-ingest"
    function_version = "$LATEST"
    memory_limit_in_mb = 2048
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:imgpipe-ingest"
    aws_request_id = "test-request"

    def __init__(self, remaining_ms: int = 120_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def harness(aws: Clients, classifier: Classifier, monkeypatch: pytest.MonkeyPatch) -> Harness:
    settings = Settings(table_name=TABLE)
    service = build_service(settings, clients=aws, classifier=classifier)
    h = Harness(clients=aws, service=service)
    original = classifier.forward

    def counting_forward(batch: Any) -> Any:
        h.forward_calls.append(len(batch))
        return original(batch)

    monkeypatch.setattr(classifier, "forward", counting_forward)
    import handlers.ingest

    monkeypatch.setattr(handlers.ingest, "_service", service)
    return h


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def execute_state_machines(endpoint: str, on: bool) -> None:
    """Switch moto's Step Functions between running definitions and only recording them
    (a process-wide setting of the server at `endpoint`)."""
    import urllib.request

    body = json.dumps({"stepfunctions": {"execute_state_machine": on}}).encode()
    request = urllib.request.Request(f"{endpoint}/moto-api/config", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
