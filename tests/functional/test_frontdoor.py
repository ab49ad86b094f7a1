"""The local function URL over HTTP, with stand-in functions: what a caller sees when the
function fails, answers binary data, or the request is too large for Lambda."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from imgpipe.local.frontdoor import MAX_EVENT_BYTES, FrontDoor


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


# ---- load and framing, at the socket level -----------------------------------------------


def test_fifty_concurrent_requests_are_all_answered(door: tuple[FrontDoor, Function]) -> None:
    """socketserver's default backlog (5) reset most of 50 callers arriving at once; the
    front door listens with the emulator's (128)."""
    import http.client
    import threading

    front, function = door
    function.answer = (200, json.dumps({"statusCode": 200, "body": "{}"}).encode(), None)
    host, port = front.url[len("http://"):].split(":")
    start = threading.Barrier(50)
    statuses: list[int] = []
    errors: list[str] = []

    def one() -> None:
        start.wait()
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", "/classify", body=b"\xff\xd8" * 500,
                         headers={"Content-Type": "image/jpeg"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            conn.close()
        except OSError as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert statuses == [200] * 50 and len(function.events) == 50


class Wire:
    """One raw TCP connection to the front door: bytes out, parsed responses in."""

    def __init__(self, url: str) -> None:
        import socket

        host, port = url[len("http://"):].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "POST") -> tuple[int, dict[str, str], bytes]:
        """The next response on the connection (HEAD: headers only)."""
        status_line = self.reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers: dict[str, str] = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, value = line.decode("latin-1").split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        return int(status_line.split()[1]), headers, self.reader.read(length)

    def closed(self) -> bool:
        """Does the server close the connection (EOF) rather than send anything more?"""
        return self.reader.read() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def post_head(path: str = "/classify", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: door\r\nContent-Type: image/jpeg\r\n{extra}"
            "\r\n").encode()


def event_body(event: dict[str, object]) -> bytes:
    return base64.b64decode(str(event.get("body", "")))


@pytest.fixture
def wire(door: tuple[FrontDoor, Function]) -> Iterator[Wire]:
    door[1].answer = (200, json.dumps({"statusCode": 200, "body": "{}"}).encode(), None)
    w = Wire(door[0].url)
    yield w
    w.close()


def test_a_chunked_body_is_read_whole(door: tuple[FrontDoor, Function], wire: Wire) -> None:
    photo = bytes(range(256)) * 40
    wire.send(post_head(extra="Transfer-Encoding: chunked\r\n")
              + chunked(photo[:1000], photo[1000:1001], photo[1001:]))
    status, _, _ = wire.response()
    assert status == 200
    (event,) = door[1].events
    assert event_body(event) == photo
    assert "transfer-encoding" in event["headers"]  # type: ignore[operator]


def test_a_request_hidden_in_a_chunked_body_is_never_answered_as_its_own(
        door: tuple[FrontDoor, Function], wire: Wire) -> None:
    hidden = b"GET /hidden HTTP/1.1\r\nHost: door\r\n\r\n"
    wire.send(post_head(extra="Transfer-Encoding: chunked\r\n") + chunked(hidden)
              + b"GET /last HTTP/1.1\r\nHost: door\r\nConnection: close\r\n\r\n")
    assert wire.response()[0] == 200
    assert wire.response("GET")[0] == 200
    assert wire.closed()
    paths = [e["rawPath"] for e in door[1].events]
    assert paths == ["/classify", "/last"]
    assert event_body(door[1].events[0]) == hidden


@pytest.mark.parametrize(("head", "rest", "status", "says"), [
    ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", chunked(b"abcde"), 400,
     "both Transfer-Encoding and Content-Length"),
    ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", chunked(b"abcde"), 400,
     "both Transfer-Encoding and Content-Length"),
    ("Transfer-Encoding: gzip\r\n", b"abcde", 400, "Transfer-Encoding gzip is not supported"),
    ("Transfer-Encoding: gzip, chunked\r\n", chunked(b"abcde"), 501, "not supported"),
    ("Content-Length: abc\r\n", b"abc", 400, "Content-Length must be one whole number"),
    ("Content-Length: -1\r\n", b"", 400, "Content-Length must be one whole number"),
    ("Content-Length: +5\r\n", b"abcde", 400, "Content-Length must be one whole number"),
    ("Content-Length: 5\r\nContent-Length: 6\r\n", b"abcdef", 400, "one whole number"),
    ("Content-Length: " + "9" * 30 + "\r\n", b"", 413, "smaller than"),
    ("Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n", 400, "hexadecimal"),
    ("Transfer-Encoding: chunked\r\n", b"-5\r\nabcde\r\n0\r\n\r\n", 400, "hexadecimal"),
    ("Transfer-Encoding: chunked\r\n", b"3\r\nabcde\r\n0\r\n\r\n", 400, "not followed by CRLF"),
    ("Transfer-Encoding: chunked\r\n", b"%x\r\n" % (7 * 1024 * 1024), 413, "smaller than"),
], ids=["te-then-cl", "cl-then-te", "gzip", "gzip-chunked", "cl-abc", "cl-negative",
        "cl-plus", "cl-twice", "cl-huge", "chunk-not-hex", "chunk-negative",
        "chunk-overrun", "chunked-too-large"])
def test_a_badly_framed_request_is_refused_and_the_connection_closed(
        door: tuple[FrontDoor, Function], wire: Wire, head: str, rest: bytes, status: int,
        says: str) -> None:
    smuggled = b"GET /hidden HTTP/1.1\r\nHost: door\r\n\r\n"
    wire.send(post_head(extra=head) + rest + smuggled)
    got, headers, body = wire.response()
    assert (got, headers["connection"]) == (status, "close")
    assert says in json.loads(body)["Message"]
    assert wire.closed(), "nothing after a refused frame is read as a request"
    assert door[1].events == []


def test_head_is_forwarded_and_answered_without_a_body(
        door: tuple[FrontDoor, Function], wire: Wire) -> None:
    door[1].answer = (200, json.dumps({"statusCode": 200, "body": "<html>page</html>",
                                       "headers": {"content-type": "text/html"}}).encode(),
                      None)
    wire.send(b"HEAD / HTTP/1.1\r\nHost: door\r\n\r\n")
    status, headers, _ = wire.response("HEAD")
    assert (status, headers["content-type"], headers["content-length"]) == (
        200, "text/html", str(len("<html>page</html>")))
    # No body was sent: the next response on the same connection parses cleanly.
    wire.send(b"GET / HTTP/1.1\r\nHost: door\r\n\r\n")
    assert wire.response("GET") == (200, headers, b"<html>page</html>")
    assert [e["requestContext"]["http"]["method"]  # type: ignore[index]
            for e in door[1].events] == ["HEAD", "GET"]


def test_http_servers_own_refusals_are_json_not_html(wire: Wire) -> None:
    wire.send(b"BREW /pot HTTP/1.1\r\nHost: door\r\n\r\n")
    status, headers, body = wire.response()
    assert status == 501 and headers["content-type"] == "application/json"
    assert "Message" in json.loads(body)


def test_an_idle_connection_is_closed() -> None:
    function = Function()
    function.answer = (200, json.dumps({"statusCode": 200, "body": "{}"}).encode(), None)
    front = FrontDoor(function, idle_timeout_s=0.2)
    front.start()
    try:
        wire = Wire(front.url)
        wire.send(b"GET / HTTP/1.1\r\nHost: door\r\n\r\n")
        assert wire.response("GET")[0] == 200
        assert wire.closed(), "the kept-alive connection, idle, was closed by the server"
        wire.close()
        wire = Wire(front.url)
        wire.send(post_head(extra="Content-Length: 10\r\n") + b"abc")  # and then silence
        assert wire.closed()
        wire.close()
        assert len(function.events) == 1
    finally:
        front.stop()
