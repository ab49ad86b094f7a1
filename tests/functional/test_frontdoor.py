"""The local function URL over HTTP, with stand-in functions: what a caller sees when the
function fails, answers binary data, or the request is too large for Lambda."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from pipeline.local.frontdoor import MAX_EVENT_BYTES, FrontDoor


class Function:
    """Records the events it gets and answers what it is told."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self.answer: tuple[int, bytes, str | None] = (200, b"{}", None)

    def __call__(self, payload: bytes) -> tuple[int, bytes, str | None]:
        self.events.append(json.loads(payload))
        return self.answer


@pytest.fixture
def door() -> Iterator[tuple[FrontDoor, Function]]:
    function = Function()
    front = FrontDoor(function, cors={"AllowOrigins": ["http://page.example"],
                                      "AllowMethods": ["GET", "POST"]})
    front.start()
    yield front, function
    front.stop()


def call(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_a_function_error_is_502(door: tuple[FrontDoor, Function]) -> None:
    front, function = door
    function.answer = (200, b'{"errorType": "KeyError", "errorMessage": "x"}', "Unhandled")
    status, _, body = call(front.url + "/classify", b"x", {"Content-Type": "image/png"})
    assert (status, json.loads(body)) == (502, {"Message": "Internal Server Error"})


def test_a_binary_answer_and_cors_for_the_allowed_origin(
        door: tuple[FrontDoor, Function]) -> None:
    front, function = door
    function.answer = (200, json.dumps({
        "statusCode": 201, "headers": {"content-type": "image/png"},
        "body": base64.b64encode(b"\x89PNG").decode(), "isBase64Encoded": True}).encode(),
        None)
    status, headers, body = call(front.url + "/x?a=1", headers={
        "Origin": "http://page.example"})
    assert (status, body, headers["content-type"]) == (201, b"\x89PNG", "image/png")
    assert headers["Access-Control-Allow-Origin"] == "http://page.example"
    (event,) = function.events
    assert event["rawPath"] == "/x" and event["queryStringParameters"] == {"a": "1"}

    status, headers, _ = call(front.url + "/x", headers={"Origin": "http://evil.example"})
    assert status == 201 and "Access-Control-Allow-Origin" not in headers


def test_a_preflight_is_answered_without_the_function(
        door: tuple[FrontDoor, Function]) -> None:
    front, function = door
    status, headers, _ = call(front.url + "/classify", method="OPTIONS", headers={
        "Origin": "http://page.example", "Access-Control-Request-Method": "POST"})
    assert status == 200 and headers["Access-Control-Allow-Methods"] == "GET,POST"
    assert function.events == []


def test_a_request_over_lambdas_payload_is_413_without_the_function(
        door: tuple[FrontDoor, Function]) -> None:
    front, function = door
    # Under 6 MB of body, but over 6 MB as base64 in the event.
    body = b"\0" * (5 * 1024 * 1024)
    status, _, answer = call(front.url + "/classify", body, {"Content-Type": "image/jpeg"})
    assert status == 413 and str(MAX_EVENT_BYTES) in json.loads(answer)["Message"]
    assert function.events == []
