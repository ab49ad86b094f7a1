"""The HTTP API's answers that depend on what AWS says: the upload form the factory wires
is SigV4 whatever the region's botocore default, and a denial reading an s3 URI is a 403
with its sentence, not "try again" and not "does not exist"."""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from pipeline.aws import Clients
from pipeline.factory import build_api
from pipeline.settings import Settings

BUCKET = "imgpipe-123456789012-us-east-1"


def _event(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"rawPath": path, "requestContext": {"http": {"method": method, "path": path}},
            "headers": {"content-type": "application/json"},
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "isBase64Encoded": True}


def _api(s3: Any = None, region: str = "us-east-1") -> Any:
    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE",
                                    aws_secret_access_key="secret", region_name=region)
    clients = Clients(s3=s3 or session.client("s3"), dynamodb=session.client("dynamodb"))
    return build_api(Settings(region=region), BUCKET, clients=clients,
                     classifier=object(),  # type: ignore[arg-type]
                     session=session)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_the_api_hands_out_sigv4_upload_forms(region: str) -> None:
    answer = _api(region=region).handle(_event("POST", "/uploads", {
        "filename": "coffee.jpg", "content_type": "image/jpeg"}))
    assert answer["statusCode"] == 200, answer
    doc = json.loads(answer["body"])
    assert doc["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert "signature" not in doc["fields"] and "AWSAccessKeyId" not in doc["fields"]
    assert doc["url"] == f"https://{BUCKET}.s3.{region}.amazonaws.com/"


class _Refusing:
    def __init__(self, code: str, status: int, message: str) -> None:
        self.error = ClientError({"Error": {"Code": code, "Message": message},
                                  "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    def get_object(self, **kwargs: Any) -> Any:
        raise self.error


def test_a_denied_s3_uri_is_403_with_what_was_denied() -> None:
    api = _api(_Refusing("AccessDenied", 403, "Access Denied"))
    uri = f"s3://{BUCKET}/incoming/locked.jpg"
    answer = api.handle(_event("POST", "/classify", {"s3": uri}))
    assert answer["statusCode"] == 403
    assert json.loads(answer["body"])["error"] == (
        f"reading {uri}: access denied (AccessDenied): the role's policy, the bucket policy "
        "or the object's KMS key refuses it (a missing object would answer 404)")


def test_a_missing_s3_uri_is_still_404() -> None:
    api = _api(_Refusing("NoSuchKey", 404, "The specified key does not exist."))
    uri = f"s3://{BUCKET}/incoming/none.jpg"
    answer = api.handle(_event("POST", "/classify", {"s3": uri}))
    assert answer["statusCode"] == 404
    assert json.loads(answer["body"])["error"] == f"{uri} does not exist"
