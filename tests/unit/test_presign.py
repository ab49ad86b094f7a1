"""The upload page's presigned POSTs are what S3 accepts for a bucket created today: Signature
Version 4 (AWS's "Browser-Based Uploads Using POST (AWS Signature Version 4)" form fields),
at the bucket's regional endpoint; and the local emulator refuses the SigV2 forms S3
refuses, with S3's answer (tests/events/s3_error_sigv2_refused.xml)."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials

from imgpipe.local.emulator import sigv2_post_refusal
from pipeline.aws import presigning_client
from pipeline.settings import Settings

EVENTS = Path(__file__).resolve().parents[1] / "events"
SIGV4_FIELDS = {"x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature",
                "policy"}


def _session(region: str) -> boto3.session.Session:
    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE",
                                    aws_secret_access_key="secret", region_name=region)
    assert isinstance(session.get_credentials(), Credentials)
    return session


def _post(region: str, bucket: str = "imgpipe-123456789012-" + "x",
          endpoint: str = "") -> dict[str, object]:
    settings = Settings(region=region, endpoint_url=endpoint)
    client = presigning_client(settings, bucket, _session(region))
    return dict(client.generate_presigned_post(
        bucket, "incoming/uploads/a/photo.jpg", Fields={"Content-Type": "image/jpeg"},
        Conditions=[{"Content-Type": "image/jpeg"}]))


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2",
                                    "eu-central-1"])
def test_presigned_posts_are_sigv4_at_the_regional_endpoint(region: str) -> None:
    post = _post(region, "imgpipe-photos")
    fields = post["fields"]
    assert isinstance(fields, dict)
    assert set(fields) >= SIGV4_FIELDS
    assert not {"AWSAccessKeyId", "signature"} & set(fields)
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    # <access key>/<yyyymmdd>/<region>/s3/aws4_request, as AWS documents it
    key, _, scope_region, service, terminal = str(fields["x-amz-credential"]).split("/")
    assert (key, scope_region, service, terminal) == ("AKIDEXAMPLE", region, "s3",
                                                      "aws4_request")
    assert post["url"] == f"https://imgpipe-photos.s3.{region}.amazonaws.com/"
    # The signed policy names the same algorithm, credential and date as the form.
    policy = json.loads(base64.b64decode(str(fields["policy"])))
    for name in ("x-amz-algorithm", "x-amz-credential", "x-amz-date"):
        assert {name: fields[name]} in policy["conditions"]
    assert sigv2_post_refusal({k: str(v) for k, v in fields.items()}) is None


def test_a_bucket_name_with_dots_and_the_local_emulator_use_path_style() -> None:
    assert _post("eu-west-1", "photos.example.org")["url"] == (
        "https://s3.eu-west-1.amazonaws.com/photos.example.org")
    local = _post("us-east-1", "imgpipe-local", endpoint="http://127.0.0.1:4566")
    assert local["url"] == "http://127.0.0.1:4566/imgpipe-local"
    fields = local["fields"]
    assert isinstance(fields, dict) and fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"


def test_the_emulator_refuses_a_sigv2_form_as_s3_does() -> None:
    # What botocore signs without signature_version="s3v4" in us-east-1: the old code's form.
    plain = _session("us-east-1").client("s3")
    fields = plain.generate_presigned_post("imgpipe-local", "incoming/a.jpg")["fields"]
    assert {"AWSAccessKeyId", "signature"} <= set(fields)
    refusal = sigv2_post_refusal(fields)
    assert refusal is not None
    status, headers, body = refusal
    expected = ET.fromstring((EVENTS / "s3_error_sigv2_refused.xml").read_bytes())
    got = ET.fromstring(body.encode())
    assert status == 400 and headers["Content-Type"] == "application/xml"
    assert got.tag == expected.tag == "Error"
    assert [c.tag for c in got] == [c.tag for c in expected]
    for tag in ("Code", "Message"):
        assert got.findtext(tag) == expected.findtext(tag)


def test_a_form_naming_sigv4_without_its_signature_is_refused_too() -> None:
    fields = {"key": "incoming/a.jpg", "policy": "e30=", "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
              "X-Amz-Credential": "AKIDEXAMPLE/20261204/us-east-1/s3/aws4_request",
              "X-Amz-Date": "20261204T000000Z"}
    assert sigv2_post_refusal(fields) is not None
    assert sigv2_post_refusal({**fields, "X-Amz-Signature": "ab" * 32}) is None


def _wsgi(app: Any, environ: dict[str, str]) -> tuple[str, bytes]:
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, headers: seen.append(status)))
    return seen[0], body


def test_sigv2_signed_s3_requests_are_refused_before_moto() -> None:
    """A SigV2 Authorization header or presigned URL (what botocore makes with
    signature_version="s3" or "s3-query") is refused; SigV4 ones pass to the emulator."""
    from imgpipe.local.emulator import refuse_sigv2_requests

    def moto(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"moto"]

    app = refuse_sigv2_requests(moto)
    plain = _session("us-east-1").client("s3", config=Config(signature_version="s3"))
    url = plain.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    query = url.split("?", 1)[1]
    status, body = _wsgi(app, {"QUERY_STRING": query, "REQUEST_METHOD": "GET"})
    assert status.startswith("400") and b"<Code>InvalidRequest</Code>" in body
    status, _ = _wsgi(app, {"HTTP_AUTHORIZATION": "AWS AKIDEXAMPLE:c2lnbmF0dXJl",
                            "REQUEST_METHOD": "GET", "QUERY_STRING": ""})
    assert status.startswith("400")
    v4 = presigning_client(Settings(region="us-east-1"), "b", _session("us-east-1"))
    v4_query = v4.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    assert _wsgi(app, {"QUERY_STRING": v4_query.split("?", 1)[1], "REQUEST_METHOD": "GET"}) \
        == ("200 OK", b"moto")
    assert _wsgi(app, {"HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/...",
                       "REQUEST_METHOD": "GET", "QUERY_STRING": ""}) == ("200 OK", b"moto")
