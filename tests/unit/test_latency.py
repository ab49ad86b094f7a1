"""The emulator's latency table and middleware (`imgpipe local --latency`): every figure
has its source, each request is recognised as its operation, the delay is the operation's
first byte plus its bodies at the table's rate, slept with no lock of the emulator held,
and nothing is delayed unless asked."""

from __future__ import annotations

import argparse
import io
import json
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from imgpipe.local.latency import (
    CONTROL_PATH,
    NO_LATENCY,
    PROFILES,
    Delay,
    LatencyMiddleware,
    LatencyTable,
    load_table,
    operation_of,
)
from pipeline.errors import ConfigError

SIGV4 = ("AWS4-HMAC-SHA256 Credential=testing/20261204/us-east-1/{service}/aws4_request, "
         "SignedHeaders=host;x-amz-date, Signature=abc")


def s3(method: str, path: str, query: str = "", host: str = "127.0.0.1:4566",
       **extra: str) -> dict[str, Any]:
    return {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "HTTP_HOST": host, "HTTP_AUTHORIZATION": SIGV4.format(service="s3"), **extra}


def json_call(target: str) -> dict[str, Any]:
    return {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "QUERY_STRING": "",
            "HTTP_X_AMZ_TARGET": target}


def test_every_figure_of_the_aws_table_names_its_source() -> None:
    doc = json.loads(PROFILES["aws"].read_text())
    sources = doc["sources"]
    for name, text in sources.items():
        # AWS's documentation (its address), else a measurement or an assumption said so
        assert "https://docs.aws.amazon.com/" in text or "measurement" in text \
            or text.startswith("Assumed"), name
    for service, ops in doc["operations"].items():
        assert "*" in ops, service  # every request of a listed service is delayed
        for op, entry in ops.items():
            # "key, key (a note)": the notes aside, the sources' names
            named = {s.strip() for s in re.sub(r"\([^)]*\)", "", entry["source"]).split(",")}
            assert named <= set(sources), (service, op, named)
            assert 0 < entry["ms"] <= 50, (service, op)  # modest: medians, not tails
    table = load_table("aws")
    # the hand measurement: GET 20 ms + 3 MB at 90 MB/s, PUT 25 ms, DynamoDB 5-8
    get = table.delay("s3", "GetObject")
    assert get is not None and get.seconds(3_000_000) == pytest.approx(0.020 + 3 / 90)
    assert table.delay("s3", "PutObject") == Delay(25, 90, get.source.replace(
        "s3-small,", "s3-small (a write: issue 21's 25 ms),"))
    for op in ("GetItem", "PutItem"):
        d = table.delay("dynamodb", op)
        assert d is not None and 5 <= d.ms <= 8
    for op in ("ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility"):
        assert table.delay("sqs", op) is not None
    assert table.delay("stepfunctions", "StartExecution") is not None
    assert table.delay("lambda", "Invoke") is None  # not in the table: not delayed


@pytest.mark.parametrize(("environ", "expected"), [
    (s3("GET", "/photos/in/a.jpg"), ("s3", "GetObject")),
    (s3("HEAD", "/photos/in/a.jpg"), ("s3", "HeadObject")),
    (s3("PUT", "/photos/out/a.json"), ("s3", "PutObject")),
    (s3("PUT", "/photos/in/a.jpg", "partNumber=1&uploadId=u"), ("s3", "UploadPart")),
    (s3("DELETE", "/photos/in/a.jpg"), ("s3", "DeleteObject")),
    (s3("GET", "/photos", "list-type=2&prefix=in%2F"), ("s3", "ListObjectsV2")),
    (s3("GET", "/photos/", "prefix=in%2F"), ("s3", "ListObjects")),
    (s3("HEAD", "/photos"), ("s3", "HeadBucket")),
    (s3("POST", "/photos", "delete="), ("s3", "DeleteObjects")),
    (s3("GET", "/photos", "notification="), ("s3", "*")),
    # virtual-hosted: the bucket is in the host, the key is the whole path
    (s3("GET", "/in/a.jpg", host="photos.s3.us-east-1.amazonaws.com"), ("s3", "GetObject")),
    (s3("GET", "/", "list-type=2", host="photos.s3.amazonaws.com"), ("s3", "ListObjectsV2")),
    # presigned: the signing service is in the query string
    ({"REQUEST_METHOD": "GET", "PATH_INFO": "/photos/in/a.jpg", "HTTP_HOST": "127.0.0.1",
      "QUERY_STRING": "X-Amz-Credential=testing%2F20261204%2Fus-east-1%2Fs3%2Faws4_request"},
     ("s3", "GetObject")),
    (json_call("DynamoDB_20120810.PutItem"), ("dynamodb", "PutItem")),
    (json_call("DynamoDB_20120810.BatchGetItem"), ("dynamodb", "BatchGetItem")),
    (json_call("AmazonSQS.ReceiveMessage"), ("sqs", "ReceiveMessage")),
    (json_call("AmazonSQS.ChangeMessageVisibilityBatch"),
     ("sqs", "ChangeMessageVisibilityBatch")),
    (json_call("AWSStepFunctions.StartExecution"), ("stepfunctions", "StartExecution")),
    ({"REQUEST_METHOD": "POST", "PATH_INFO": "/", "QUERY_STRING": "Action=DeleteMessage",
      "HTTP_AUTHORIZATION": SIGV4.format(service="sqs")}, ("sqs", "DeleteMessage")),
    ({"REQUEST_METHOD": "POST", "PATH_INFO": "/2015-03-31/functions/f/invocations",
      "QUERY_STRING": "", "HTTP_AUTHORIZATION": SIGV4.format(service="lambda")},
     ("lambda", "*")),
])
def test_each_request_is_recognised_as_its_operation(environ: dict[str, Any],
                                                     expected: tuple[str, str]) -> None:
    assert operation_of(environ) == expected


class App:
    """A WSGI application answering `body`, holding `lock` while it serves."""

    def __init__(self, body: bytes = b"{}") -> None:
        self.body = body
        self.lock = threading.Lock()
        self.served = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        with self.lock:
            self.served += 1
            start_response("200 OK", [("Content-Length", str(len(self.body)))])
            return [self.body]


def call(app: Any, environ: dict[str, Any]) -> tuple[str, bytes]:
    got: list[str] = []
    body = b"".join(app(environ, lambda status, headers, *_: got.append(status)))
    return got[0], body


TINY = LatencyTable("tiny", {
    "s3": {"GetObject": Delay(200, 1.0), "PutObject": Delay(30, 2.0)},
    "dynamodb": {"PutItem": Delay(8), "*": Delay(5)},
})


def test_the_delay_is_the_operations_first_byte_plus_its_bodies_at_the_rate() -> None:
    slept: list[float] = []
    app = App(body=b"x" * 500_000)
    middleware = LatencyMiddleware(app, TINY, sleep=slept.append)
    assert call(middleware, s3("GET", "/photos/in/a.jpg")) == ("200 OK", app.body)
    assert slept[-1] == pytest.approx(0.200 + 0.5)  # 500 KB received at 1 MB/s
    app.body = b""
    call(middleware, s3("PUT", "/photos/out/a.json", CONTENT_LENGTH="100000"))
    assert slept[-1] == pytest.approx(0.030 + 0.05)  # 100 KB sent at 2 MB/s
    call(middleware, json_call("DynamoDB_20120810.PutItem"))
    assert slept[-1] == pytest.approx(0.008)
    call(middleware, json_call("DynamoDB_20120810.Query"))  # the service's "*"
    assert slept[-1] == pytest.approx(0.005)
    before = len(slept)
    call(middleware, s3("HEAD", "/photos/in/a.jpg"))  # no entry, no "*": not delayed
    call(middleware, json_call("AmazonSQS.ReceiveMessage"))  # service not in the table
    assert len(slept) == before and app.served == 6
    assert middleware.status()["delayed"]["s3 GetObject"] == {"requests": 1,
                                                              "seconds": 0.7}


def test_the_delay_is_slept_after_the_app_released_its_locks() -> None:
    """The journal's write lock (inside) is free while a request waits out its latency:
    other requests are served meanwhile."""
    app = App()
    free_while_sleeping: list[bool] = []

    def sleep(_seconds: float) -> None:
        free = app.lock.acquire(blocking=False)
        free_while_sleeping.append(free)
        if free:
            app.lock.release()

    middleware = LatencyMiddleware(app, TINY, sleep=sleep)
    call(middleware, json_call("DynamoDB_20120810.PutItem"))
    assert free_while_sleeping == [True]


def test_nothing_is_delayed_by_default() -> None:
    from imgpipe.commands.local import add_stack_options, stack_options
    from imgpipe.local.stack import StackOptions

    assert StackOptions().latency == "none"
    p = argparse.ArgumentParser()
    add_stack_options(p)
    assert stack_options(p.parse_args([])).latency == "none"
    assert stack_options(p.parse_args(["--latency", "aws"])).latency == "aws"
    slept: list[float] = []
    app = App()
    middleware = LatencyMiddleware(app, sleep=slept.append)
    assert middleware.table is NO_LATENCY and load_table("none") is NO_LATENCY
    for environ in (s3("GET", "/photos/in/a.jpg"), json_call("DynamoDB_20120810.PutItem")):
        call(middleware, environ)
    assert slept == [] and app.served == 2


def test_the_table_is_switched_and_read_on_its_control_path(tmp_path: Path) -> None:
    middleware = LatencyMiddleware(App(), sleep=lambda _s: None)

    def control(method: str, body: dict[str, Any] | None = None) -> tuple[str, Any]:
        data = json.dumps(body or {}).encode()
        status, answer = call(middleware, {
            "REQUEST_METHOD": method, "PATH_INFO": CONTROL_PATH, "QUERY_STRING": "",
            "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data)})
        return status, json.loads(answer)

    assert control("GET")[1] == {"profile": "none", "operations": {}, "delayed": {}}
    status, doc = control("POST", {"profile": "aws"})
    assert status == "200 OK" and doc["profile"] == "aws"
    assert doc["operations"]["s3"]["GetObject"] == {"ms": 20.0, "mb_per_s": 90.0}
    call(middleware, s3("GET", "/photos/in/a.jpg"))
    assert control("GET")[1]["delayed"] == {"s3 GetObject": {"requests": 1,
                                                             "seconds": 0.02}}
    status, doc = control("POST", {"profile": "fast"})
    assert status == "400 Bad Request" and "no such profile or file" in doc["error"]
    assert control("POST", {"profile": "none"})[1]["profile"] == "none"


def test_a_table_it_cannot_use_is_refused_with_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--latency fast: no such profile or file"):
        load_table("fast")
    bad = tmp_path / "bad.json"
    bad.write_text('{"operations": {"s3": {"GetObject": {"mb_per_s": 90}}}}')
    with pytest.raises(ConfigError, match="not a latency table.*needs \"ms\""):
        load_table(str(bad))
    bad.write_text('{"operations": {"s3": {"GetObject": {"ms": -1}}}}')
    with pytest.raises(ConfigError, match="ms must be >= 0"):
        load_table(str(bad))
    good = tmp_path / "mine.json"
    good.write_text('{"operations": {"dynamodb": {"*": {"ms": 3}}}}')
    assert load_table(str(good)) == LatencyTable("mine", {"dynamodb": {"*": Delay(3)}})


def test_imgpipe_local_refuses_an_unknown_table_before_starting_anything(
        capsys: pytest.CaptureFixture[str]) -> None:
    from imgpipe.cli import main

    assert main(["local", "--latency", "fast", "--port", "1"]) != 0
    err = capsys.readouterr().err
    assert "--latency fast: no such profile or file (profiles: none, aws" in err
