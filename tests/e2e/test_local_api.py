"""The HTTP API on `imgpipe local`, over HTTP: every status code a user's request can get,
through the front door (function URL, payload 2.0) and the API function's Runtime API
workers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.api import MAX_BODY_BYTES
from pipeline.modelstore import model_id_of
from tests.e2e.conftest import ROOT, LocalProcess, start_local, stop_local
from tests.unit.test_decode import png_header_only

pytestmark = pytest.mark.e2e

COFFEE = (ROOT / "samples" / "coffee.jpg").read_bytes()
BUCKET, PREFIX, TABLE = "imgpipe-local", "incoming/", "imgpipe-predictions"
MODEL = model_id_of("")


class Api:
    def __init__(self, lp: LocalProcess, url: str) -> None:
        self.lp, self.url = lp, url

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=dict(headers or {}))
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, got, raw = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            status, got, raw = e.code, dict(e.headers), e.read()
        try:
            return status, got, json.loads(raw)
        except ValueError:
            return status, got, raw

    def classify(self, body: bytes | None, content_type: str | None = None,
                 query: str = "") -> tuple[int, Any]:
        status, _, doc = self.request("POST", "/classify" + query, body, content_type)
        return status, doc


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    lp = start_local(tmp_path_factory.mktemp("home"))
    url = next(line.split("=", 1)[1].strip() for line in lp.output
               if "export IMGPIPE_API_URL=" in line)
    yield Api(lp, url)
    stop_local(lp)


def put(lp: LocalProcess, tmp: Path, key: str, data: bytes) -> str:
    path = tmp / "upload"
    path.write_bytes(data)
    lp.aws("s3", "cp", str(path), f"s3://{BUCKET}/{key}")
    return f"s3://{BUCKET}/{key}"


# ---- 200 -------------------------------------------------------------------------------


def test_a_photo_is_classified_and_nothing_is_written(api: Api) -> None:
    status, doc = api.classify(COFFEE, "image/jpeg")
    assert status == 200, doc
    assert doc["label"] == "espresso" and doc["status"] == "classified"
    assert [t["label"] for t in doc["top_k"]][0] == "espresso" and len(doc["top_k"]) == 5
    assert (doc["width"], doc["height"], doc["format"], doc["model"]) == (600, 400, "JPEG",
                                                                          MODEL)
    assert doc["image"] is None and doc["stored"] is False
    assert doc["timings"]["classify_ms"] > 0
    listed = api.lp.aws("s3api", "list-objects-v2", "--bucket", BUCKET)
    assert not listed or "Contents" not in listed  # no object, so no record either
    assert api.lp.aws("dynamodb", "scan", "--table-name", TABLE)["Count"] == 0


def test_store_true_puts_the_photo_where_the_event_path_records_it(api: Api) -> None:
    status, doc = api.classify(COFFEE, "image/jpeg", "?store=true")
    assert status == 200 and doc["stored"] is True, doc
    assert doc["image"].startswith(f"s3://{BUCKET}/{PREFIX}api/")
    item = api.lp.wait_for_item(TABLE, doc["image"], MODEL)
    assert item["status"]["S"] == "classified" and item["label"]["S"] == doc["label"]


def test_store_true_writes_nothing_for_a_file_it_refuses(api: Api) -> None:
    def keys() -> list[str]:
        listed = api.lp.aws("s3api", "list-objects-v2", "--bucket", BUCKET,
                            "--query", "Contents[].Key")
        return listed if isinstance(listed, list) else []

    before = keys()
    status, doc = api.classify(b"These are notes.\n", "image/jpeg", "?store=true")
    assert status == 400, doc
    assert keys() == before


def test_an_s3_uri_in_the_input_prefix_is_read_and_classified(
        api: Api, tmp_path: Path) -> None:
    image = put(api.lp, tmp_path, f"{PREFIX}by-uri/coffee.jpg", COFFEE)
    status, doc = api.classify(json.dumps({"s3": image}).encode(), "application/json")
    assert status == 200, doc
    assert doc["image"] == image and doc["label"] == "espresso" and doc["stored"] is False


# ---- 400 -------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "content_type", "says"), [
    (None, None, "empty request"),
    (b"", "image/jpeg", "empty file: the object has 0 bytes"),
    (b"These are holiday notes, not a photo.\n", "image/jpeg",
     "not an image: the data is plain text"),
    (COFFEE[: len(COFFEE) // 2], "image/jpeg", "truncated image"),
    (b'{"s3": "s3://imgpipe-local/incoming/x.jpg"', "application/json",
     "the body is not valid JSON"),
    (b'{"bucket": "imgpipe-local"}', "application/json", 'expected JSON {"s3"'),
], ids=["empty-body", "zero-byte-file", "text-as-jpeg", "truncated-jpeg", "bad-json",
        "json-without-s3"])
def test_a_request_that_is_not_a_usable_image_is_400(
        api: Api, body: bytes | None, content_type: str | None, says: str) -> None:
    status, doc = api.classify(body, content_type)
    assert status == 400, doc
    assert says in doc["error"]


# ---- 413 -------------------------------------------------------------------------------


def test_a_body_over_the_stated_limit_is_413(api: Api) -> None:
    big = COFFEE + b"\0" * (MAX_BODY_BYTES + 1 - len(COFFEE))
    status, doc = api.classify(big, "image/jpeg")
    assert status == 413, doc
    assert f"{MAX_BODY_BYTES:,}-byte" in doc["error"] and "s3://" in doc["error"]


def test_a_request_over_lambdas_payload_is_413_before_the_function(api: Api) -> None:
    status, doc = api.classify(b"\xff\xd8\xff" + b"\0" * (7 * 1024 * 1024), "image/jpeg")
    assert status == 413
    assert "6291456 bytes" in doc["Message"]


def test_a_decompression_bomb_is_413_with_the_pixel_limit(api: Api) -> None:
    bomb = png_header_only(20000, 20000)
    status, doc = api.classify(bomb, "image/png")
    assert status == 413, doc
    assert "image too large: 20000x20000 pixels" in doc["error"]


# ---- 415 -------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "content_type", "says"), [
    (COFFEE, "text/plain", "Content-Type text/plain is not accepted"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml",
     "Content-Type image/svg+xml is not accepted"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "image/jpeg", "unsupported format: PDF"),
], ids=["text-content-type", "svg-content-type", "pdf-as-jpeg"])
def test_a_format_or_content_type_not_accepted_is_415(
        api: Api, body: bytes, content_type: str, says: str) -> None:
    status, doc = api.classify(body, content_type)
    assert status == 415, doc
    assert says in doc["error"]


# ---- 403 / 404 -------------------------------------------------------------------------


@pytest.mark.parametrize("uri", [
    "s3://someone-elses-bucket/incoming/coffee.jpg",
    f"s3://{BUCKET}/predictions/coffee.jpg.json",
    f"s3://{BUCKET}/{PREFIX}",
], ids=["other-bucket", "outside-the-input-prefix", "the-prefix-itself"])
def test_an_s3_uri_the_function_may_not_read_is_403(api: Api, uri: str) -> None:
    status, doc = api.classify(json.dumps({"s3": uri}).encode(), "application/json")
    assert status == 403, doc
    assert f"only objects under s3://{BUCKET}/{PREFIX}" in doc["error"]


def test_an_s3_uri_that_does_not_exist_is_404(api: Api) -> None:
    uri = f"s3://{BUCKET}/{PREFIX}no/such/photo.jpg"
    status, doc = api.classify(json.dumps({"s3": uri}).encode(), "application/json")
    assert status == 404, doc
    assert doc["error"] == f"{uri} does not exist"


# ---- the page's routes -----------------------------------------------------------------


def test_uploads_are_presigned_for_images_only(api: Api) -> None:
    status, _, doc = api.request("POST", "/uploads", json.dumps(
        {"filename": "my photo.jpg", "content_type": "image/jpeg"}).encode(),
        "application/json")
    assert status == 200, doc
    assert doc["image"].startswith(f"s3://{BUCKET}/{PREFIX}uploads/")
    assert doc["image"].endswith("/my-photo.jpg")
    assert doc["fields"]["Content-Type"] == "image/jpeg"
    policy = json.loads(__import__("base64").b64decode(doc["fields"]["policy"]))
    assert ["content-length-range", 1, doc["max_bytes"]] in policy["conditions"]

    status, _, doc = api.request("POST", "/uploads", json.dumps(
        {"filename": "notes.txt", "content_type": "text/plain"}).encode(), "application/json")
    assert status == 415
    assert doc["error"].startswith("notes.txt is text/plain, not an image")


def form_post(url: str, fields: dict[str, str], data: bytes,
              content_type: str = "image/jpeg") -> tuple[int, bytes]:
    """A browser's form upload (multipart/form-data, the file last, as S3 requires)."""
    boundary = "imgpipe-form-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="photo.jpg"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
                 + data + f"\r\n--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, data=b"".join(parts), method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_an_upload_form_is_sigv4_and_uploads(api: Api) -> None:
    status, _, doc = api.request("POST", "/uploads", json.dumps(
        {"filename": "coffee.jpg", "content_type": "image/jpeg"}).encode(), "application/json")
    assert status == 200, doc
    assert doc["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert doc["fields"]["x-amz-credential"].endswith("/us-east-1/s3/aws4_request")
    status, body = form_post(doc["url"], doc["fields"], COFFEE)
    assert status == 204, body
    key = doc["image"].split("/", 3)[3]
    head = api.lp.aws("s3api", "head-object", "--bucket", BUCKET, "--key", key)
    assert head["ContentLength"] == len(COFFEE)


def test_a_sigv2_upload_form_is_refused_as_s3_refuses_it(api: Api) -> None:
    import boto3

    # What the API handed out before: botocore's default in us-east-1 signs a POST with SigV2.
    key = f"{PREFIX}uploads/sigv2/photo.jpg"
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=api.lp.endpoint,
                      aws_access_key_id="test", aws_secret_access_key="test")
    post = s3.generate_presigned_post(BUCKET, key)
    assert "signature" in post["fields"] and "x-amz-signature" not in post["fields"]
    status, body = form_post(post["url"], post["fields"], COFFEE)
    assert status == 400, body
    assert b"<Code>InvalidRequest</Code>" in body
    assert b"Please use AWS4-HMAC-SHA256." in body
    listed = api.lp.aws("s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", key,
                        "--query", "KeyCount")
    assert str(listed) in ("0", "null")  # no object under that key


def test_a_batch_delete_is_a_post_but_not_a_form_upload(api: Api) -> None:
    # DeleteObjects is a SigV4-signed POST to the bucket: the form-upload check lets it by.
    key = f"{PREFIX}uploads/batch-delete/photo.jpg"
    api.lp.aws("s3api", "put-object", "--bucket", BUCKET, "--key", key)
    deleted = api.lp.aws("s3api", "delete-objects", "--bucket", BUCKET, "--delete",
                         json.dumps({"Objects": [{"Key": key}]}))
    assert [d["Key"] for d in deleted["Deleted"]] == [key]


def test_results_are_pending_until_the_record_exists(api: Api) -> None:
    status, _, doc = api.request(
        "GET", f"/results?image=s3://{BUCKET}/{PREFIX}not-yet.jpg")
    assert (status, doc["status"]) == (200, "pending")  # a poller's ask is no error
    status, _, doc = api.request("GET", f"/results?image=s3://{BUCKET}/predictions/x.json")
    assert status == 403


def test_cors_for_the_pages_origin(api: Api) -> None:
    origin = "http://page.example"
    status, headers, _ = api.request("OPTIONS", "/classify", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"  # the template's default origin
    assert "POST" in headers["Access-Control-Allow-Methods"]


def test_the_page_is_served(api: Api) -> None:
    status, headers, body = api.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script src="app.js"' in body
