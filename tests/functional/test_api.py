"""The HTTP API's core (`pipeline.api.HttpApi`) over moto in-process and the real model:
the refusals and stored objects a request can produce, one payload 2.0 event at a time
(the local function URL builds the same events: `imgpipe.local.frontdoor.url_event`)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image

from imgpipe.local.frontdoor import url_event
from pipeline.api import HttpApi
from pipeline.classifier import Classifier
from pipeline.factory import build_api
from pipeline.settings import Settings
from tests.functional.conftest import BUCKET, TABLE, Clients, sample


@pytest.fixture
def api(aws: Clients, classifier: Classifier) -> HttpApi:
    return build_api(Settings(table_name=TABLE), bucket=BUCKET, clients=aws,
                     classifier=classifier)


def call(api: HttpApi, method: str, target: str, body: bytes = b"",
         content_type: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": content_type} if content_type else {}
    event = url_event(method, target, headers, body, "127.0.0.1", "abc.lambda-url.local")
    response = api.handle(json.loads(json.dumps(event)))
    return response["statusCode"], json.loads(response["body"])


DEEP = b'{"s3":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
HUGE_INT = b'{"s3": ' + b"9" * 5_000 + b"}"


@pytest.mark.parametrize("route", ["/classify", "/uploads"])
@pytest.mark.parametrize(("body", "says"), [
    (DEEP, "nested too deeply"),
    (b'{"s3":' + b"[" * 50_000, "nested too deeply"),
    (HUGE_INT, "cannot be read"),
    (b'{"filename": "a.jpg", "content_type": "image/jpeg", "n": -' + b"1" * 5_000 + b"}",
     "cannot be read"),
], ids=["deep", "deep-unclosed", "huge-int", "huge-negative-int"])
def test_json_that_breaks_the_reader_is_400_with_a_sentence(
        api: HttpApi, route: str, body: bytes, says: str) -> None:
    status, doc = call(api, "POST", route, body, "application/json")
    assert status == 400, doc
    assert says in doc["error"] and "expected a JSON object" in doc["error"]
    assert len(doc["error"]) < 300


def test_results_without_an_image_says_image_is_missing(api: HttpApi) -> None:
    for target in ("/results", "/results?image=", "/results?other=1"):
        status, doc = call(api, "GET", target)
        assert status == 400
        assert doc["error"] == ("GET /results needs the image whose record you want: "
                                f"?image=s3://{BUCKET}/incoming/...")


def test_store_true_names_and_types_the_object_by_its_decoded_format(
        api: HttpApi, aws: Clients) -> None:
    png = io.BytesIO()
    Image.open(io.BytesIO(sample("coffee.jpg"))).save(png, "PNG")
    status, doc = call(api, "POST", "/classify?store=true", png.getvalue(), "image/jpeg")
    assert status == 200, doc
    assert doc["format"] == "PNG" and doc["stored"] is True
    key = doc["image"].removeprefix(f"s3://{BUCKET}/")
    assert key.endswith(".png")
    head = aws.s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "image/png"


def test_head_of_the_page_is_answered_like_get(api: HttpApi) -> None:
    event = url_event("HEAD", "/", {}, b"", "127.0.0.1", "abc.lambda-url.local")
    response = api.handle(event)
    assert response["statusCode"] == 200
    assert response["headers"]["content-type"].startswith("text/html")
