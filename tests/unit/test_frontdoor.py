"""The function URL's event and response shapes (payload format 2.0), without a server."""

from __future__ import annotations

import base64
import json

from imgpipe.local.frontdoor import FrontDoor, http_response, url_event


def test_a_binary_body_is_base64_and_headers_are_lower_case() -> None:
    event = url_event("POST", "/classify?store=true&x=1&x=2",
                      {"Content-Type": "image/jpeg", "X-Thing": "a"}, b"\xff\xd8\xff",
                      "10.0.0.1", "abc.lambda-url.local")
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert (event["rawPath"], event["rawQueryString"]) == ("/classify", "store=true&x=1&x=2")
    assert event["queryStringParameters"] == {"store": "true", "x": "1,2"}
    assert event["headers"] == {"content-type": "image/jpeg", "x-thing": "a"}
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\xd8\xff"
    http = event["requestContext"]["http"]
    assert (http["method"], http["path"], http["sourceIp"]) == ("POST", "/classify",
                                                                 "10.0.0.1")


def test_a_json_body_is_text_and_an_empty_one_is_absent() -> None:
    event = url_event("POST", "/uploads", {"content-type": "application/json"}, b'{"a": 1}',
                      "127.0.0.1", "local")
    assert (event["body"], event["isBase64Encoded"]) == ('{"a": 1}', False)
    event = url_event("GET", "/", {}, b"", "127.0.0.1", "local")
    assert "body" not in event and "queryStringParameters" not in event


def test_responses_as_a_function_url_reads_them() -> None:
    assert http_response(json.dumps({"statusCode": 413, "headers": {"a": "b"},
                                     "body": "{}"}).encode()) == (413, {"a": "b"}, b"{}")
    encoded = json.dumps({"statusCode": 200, "isBase64Encoded": True,
                          "body": base64.b64encode(b"\x00\x01").decode()}).encode()
    assert http_response(encoded)[2] == b"\x00\x01"
    # Not a response object: sent as a 200 JSON body.
    assert http_response(b'{"label": "x"}') == (200, {"Content-Type": "application/json"},
                                                b'{"label": "x"}')


def test_cors_follows_the_urls_configuration() -> None:
    def invoke(_: bytes) -> tuple[int, bytes, None]:
        return 200, b"{}", None

    door = FrontDoor(invoke, cors={"AllowOrigins": ["https://page.example"],
                                   "AllowMethods": ["GET", "POST"],
                                   "AllowHeaders": ["content-type"], "MaxAge": 300})
    assert door.cors_headers("https://other.example") == {}
    assert door.cors_headers(None) == {}
    pre = door.preflight_headers("https://page.example")
    assert pre["Access-Control-Allow-Origin"] == "https://page.example"
    assert (pre["Access-Control-Allow-Methods"], pre["Access-Control-Max-Age"]) == (
        "GET,POST", "300")
    assert FrontDoor(invoke, cors={"AllowOrigins": ["*"]}).cors_headers("http://x") == {
        "Access-Control-Allow-Origin": "*", "Vary": "Origin"}
