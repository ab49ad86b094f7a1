"""The embedded stack's processes: the emulator (moto's server in a child process), the
function host in the stack's process that answers the Lambda invocations it forwards, and
the functions' worker processes."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from imgpipe.local.functions import FunctionHost, invoke_url
from imgpipe.local.stack import (
    LocalStack,
    StackOptions,
    _spawn_emulator,
    _stop_process,
    _wait_until_listening,
    free_port,
)
from pipeline.errors import PermanentError

pytestmark = pytest.mark.e2e

AUTH = ("AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, "
        "SignedHeaders=host, Signature=0")


def _post(url: str, body: bytes) -> tuple[int, bytes, str | None]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers.get(
                "X-Amz-Function-Error")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not alive either.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_function_host_answers_as_lambda_does() -> None:
    def ok(event: dict[str, Any]) -> Any:
        return {"echo": event}

    def fails(event: dict[str, Any]) -> Any:
        raise PermanentError("that photo is not an image")

    host = FunctionHost()
    url = host.start()
    try:
        host.register_local("ok-fn", ok)
        host.register_local("failing fn", fails)
        status, body, error = _post(invoke_url(url, "ok-fn"), b'{"a": 1}')
        assert (status, error) == (200, None)
        assert json.loads(body) == {"echo": {"a": 1}}
        status, body, error = _post(invoke_url(url, "failing fn"), b"{}")
        assert (status, error) == (200, "Unhandled")
        assert json.loads(body) == {"errorType": "PermanentError",
                                    "errorMessage": "that photo is not an image"}
        status, _, _ = _post(invoke_url(url, "nobody"), b"{}")
        assert status == 404
    finally:
        host.stop()


@pytest.fixture
def emulator() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = _spawn_emulator("127.0.0.1", port, "http://127.0.0.1:9")
    _wait_until_listening("127.0.0.1", port, proc)
    yield proc, port
    _stop_process(proc)


def test_emulator_keeps_connections_alive_and_ignores_ctrl_c(
    emulator: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = emulator
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("PUT", "/keepalive-bucket", headers={"Authorization": AUTH})
    first = conn.getresponse()
    first.read()
    sock = conn.sock
    assert first.status == 200 and first.getheader("Connection") != "close"
    # A body the client announces with Expect: 100-continue, then a read of it, on the
    # same connection: each body is drained before the next request line is read.
    body = b"x" * 300_000
    conn.request("PUT", "/keepalive-bucket/a%20b.bin", body=body,
                 headers={"Authorization": AUTH, "Expect": "100-continue"})
    put = conn.getresponse()
    put.read()
    conn.request("GET", "/keepalive-bucket/a%20b.bin", headers={"Authorization": AUTH})
    got = conn.getresponse()
    assert (put.status, got.status, got.read()) == (200, 200, body)
    assert conn.sock is sock  # one TCP connection for all three
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    conn.close()

    proc.send_signal(signal.SIGINT)  # the terminal's Ctrl-C: the parent decides
    time.sleep(0.5)
    assert proc.poll() is None


def test_emulator_exits_when_its_parent_dies() -> None:
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-m", "imgpipe.local.emulator",
                                  "--port", "{free_port()}", "--functions", "http://x",
                                  "--parent-pid", str(os.getpid())])
        print(child.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait()
    assert _wait_gone(child), "the emulator outlived the stack that started it"


def test_stack_forwards_invocations_to_the_real_handler_and_stops_its_emulator() -> None:
    stack = LocalStack(StackOptions(port=free_port(), log_level="ERROR", poll=False))
    r = stack.start()
    try:
        assert stack._emulator is not None
        pid = stack._emulator.pid
        lam = stack.client("lambda")
        done = lam.invoke(FunctionName=r.backfill_function, Payload=json.dumps(
            {"Items": [{"Key": "photos/", "Size": 0}], "BatchInput": {"bucket": r.bucket}}))
        assert "FunctionError" not in done
        counts = json.loads(done["Payload"].read())["counts"]
        assert counts["ignored"] == 1 and sum(counts.values()) == 1
        bad = lam.invoke(FunctionName=r.backfill_function, Payload=b'{"Items": []}')
        assert bad["FunctionError"] == "Unhandled"
        assert json.loads(bad["Payload"].read())["errorType"] == "PermanentError"
        # Both ran in one warm worker process of the backfill function, not in this one.
        (worker,) = stack.pools[r.backfill_function].workers
        assert worker.proc is not None and worker.alive and worker.invocations == 2
        workers = [worker.proc.pid]
    finally:
        stack.stop()
    assert _wait_gone(pid)
    assert all(_wait_gone(w) for w in workers), "a worker outlived its stack"


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is `pid`, with their command lines."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found[int(entry)] = cmdline
    return found


def test_imgpipe_local_says_so_and_exits_when_its_emulator_dies(tmp_path: Any) -> None:
    """Not 503 "try again" and "poller error" twice a second for ever."""
    from tests.e2e.conftest import start_local

    lp = start_local(tmp_path)
    (emulator_pid,) = [pid for pid, cmd in _children(lp.proc.pid).items()
                       if "imgpipe.local.emulator" in cmd]
    os.kill(emulator_pid, signal.SIGKILL)
    try:
        lp.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        lp.proc.kill()
        raise AssertionError("imgpipe local went on without its emulator:\n"
                             + "".join(lp.output[-20:])) from None
    deadline = time.monotonic() + 10  # the drain thread reads the last lines
    while "stops;" not in "".join(lp.output) and time.monotonic() < deadline:
        time.sleep(0.1)
    output = "".join(lp.output)
    assert lp.proc.returncode == 1
    assert (f"imgpipe local: the emulator (process {emulator_pid}, every S3, SQS, DynamoDB "
            "and Step Functions call of the stack) was killed by SIGKILL: the stack cannot "
            "go on without it and stops") in output
    assert output.count("poller error") <= 2, output
