"""The local Lambda runtime: worker processes under awslambdaric behind a Runtime API server,
with Lambda's limits enforced, driven by the local poller the way the ingest queue drives
them (SQS is moto in-process; the workers are real processes).

Tiny handlers in tests/functions/ do what a real function might do wrong (sleep past the
timeout, allocate past the memory size); the init error is the real ingest handler with a
model that does not exist.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from imgpipe.local.functions import FunctionHost
from imgpipe.local.poller import BatchResult, SqsPoller
from imgpipe.local.runtime import FunctionPool, FunctionSpec, InvokeResult, cpu_shares
from imgpipe.local.stack import SOURCE_ROOT
from tests.functional.conftest import s3_event

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions"
VISIBILITY_S = 2


def _spec(handler: str, *, timeout_s: float = 30, memory_mb: int = 512,
          root: Path = FUNCTIONS, env: dict[str, str] | None = None) -> FunctionSpec:
    return FunctionSpec(name="probe-fn", handler=handler, code_root=root, timeout_s=timeout_s,
                        memory_mb=memory_mb, environment=env or {})


@pytest.fixture
def pools() -> Iterator[Callable[..., FunctionPool]]:
    made: list[FunctionPool] = []

    def make(spec: FunctionSpec, max_workers: int = 1, **kwargs: Any) -> FunctionPool:
        pool = FunctionPool(spec, max_workers, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.stop()


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.1)


# ---------------------------------------------------------------- invocations


def test_cold_start_then_warm_reuse_with_lambdas_headers_and_environment(
    pools: Callable[..., FunctionPool],
) -> None:
    pool = pools(_spec("probe.echo", timeout_s=7, env={"IMGPIPE_TABLE": "t"}))
    first = pool.invoke(b'{"n": 1}')
    second = pool.invoke(b'{"n": 2}')
    one, two = json.loads(first.payload), json.loads(second.payload)
    assert first.function_error is None and second.function_error is None
    assert first.init_s is not None and second.init_s is None  # cold, then warm
    assert (one["event"], two["event"]) == ({"n": 1}, {"n": 2})
    assert one["pid"] == two["pid"] == first.pid and two["calls"] == 2  # the same process
    assert one["request_id"] == first.request_id != second.request_id
    assert one["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:probe-fn"
    assert 0 < one["remaining_ms"] <= 7000
    env = one["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "probe-fn"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["_HANDLER"] == "probe.echo" and env["LAMBDA_TASK_ROOT"] == str(FUNCTIONS)
    assert env["AWS_REGION"] == "us-east-1" and env["IMGPIPE_TABLE"] == "t"
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:")


def test_concurrent_invocations_get_separate_processes_with_their_share_of_cpus(
    pools: Callable[..., FunctionPool],
) -> None:
    pool = pools(_spec("probe.sleep"), max_workers=2)
    barrier = threading.Barrier(2)
    results: list[InvokeResult] = []

    def call() -> None:
        barrier.wait()
        results.append(pool.invoke(b'{"seconds": 1}'))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [json.loads(r.payload) for r in results] == ["woke up", "woke up"]
    assert len({r.pid for r in results}) == 2
    assert cpu_shares(2, [0, 1]) == [(0,), (1,)]
    assert cpu_shares(1, [0, 1]) == [(0, 1)]
    assert cpu_shares(5, [0, 1]) == [(0,), (1,), (0,), (1,), (0,)]


def test_a_caller_waiting_for_the_only_worker_gets_it_when_it_is_released(
    pools: Callable[..., FunctionPool],
) -> None:
    # More callers than workers (two pollers, one worker: `imgpipe bench`'s billed duration
    # rows). A release must wake a waiting caller, not only the pool's reaper, which waits
    # on the same condition: a caller left asleep holds its batch's messages invisible.
    pool = pools(_spec("probe.echo"), max_workers=1)
    done: list[int] = []

    def call(n: int) -> None:
        for _ in range(8):
            pool.invoke(b"{}")
        done.append(n)

    threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(done) == [0, 1, 2], f"callers still waiting for the worker: " \
        f"{sorted({0, 1, 2} - set(done))}"


def test_idle_workers_are_stopped_after_the_keep_warm_time(
    pools: Callable[..., FunctionPool],
) -> None:
    pool = pools(_spec("probe.echo"), keep_warm_s=0.5)
    pid = pool.invoke(b"{}").pid
    _wait(lambda: not pool.workers and _dead(pid), "the idle worker to stop")
    again = pool.invoke(b"{}")
    assert again.pid != pid and again.init_s is not None  # a new cold start


def test_stop_idle_retires_idle_workers_at_once(
    pools: Callable[..., FunctionPool],
) -> None:
    pool = pools(_spec("probe.echo"))  # the default keep-warm time: minutes
    first = pool.invoke(b"{}")
    assert pool.invoke(b"{}").init_s is None  # warm
    pool.stop_idle()
    _wait(lambda: not pool.workers and _dead(first.pid), "the idle worker to stop")
    again = pool.invoke(b"{}")
    assert again.pid != first.pid and again.init_s is not None  # a new cold start


def test_a_function_error_is_lambdas_error_json_and_the_worker_stays_warm(
    pools: Callable[..., FunctionPool],
) -> None:
    pool = pools(_spec("probe.fail"))
    result = pool.invoke(b'{"x": 1}')
    assert result.function_error == "Unhandled"
    error = json.loads(result.payload)
    assert (error["errorType"], error["errorMessage"]) == ("ValueError", "no good: {'x': 1}")
    assert error["stackTrace"]
    assert pool.invoke(b"{}").pid == result.pid


# ---------------------------------------------------------------- limits, through SQS


@pytest.fixture
def queue(mocked_aws: None) -> Iterator[tuple[Any, str]]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="ingest", Attributes={
        "VisibilityTimeout": str(VISIBILITY_S)})["QueueUrl"]
    yield sqs, url


def _poll_through(pool: FunctionPool, sqs: Any, url: str) -> BatchResult:
    host = FunctionHost()
    host.register_pool(pool)

    def invoke(event: dict[str, Any], _context: Any) -> Any:
        return host.call(pool.spec.name, event)

    poller = SqsPoller(sqs, url, invoke, batch_size=10, batching_window_s=0)
    result = poller.poll_once(wait_s=1)
    assert result is not None
    return result


def _comes_back(sqs: Any, url: str, ids: set[str]) -> None:
    """Every message is received again (after the visibility timeout), body intact."""
    seen: dict[str, int] = {}

    def received() -> bool:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                     AttributeNames=["All"]).get("Messages", []):
            seen[m["MessageId"]] = int(m["Attributes"]["ApproximateReceiveCount"])
        return set(seen) == ids

    _wait(received, "the batch to become visible again")
    assert set(seen.values()) == {2}


def _send(sqs: Any, url: str, count: int) -> set[str]:
    return {sqs.send_message(QueueUrl=url, MessageBody=s3_event({"key": f"incoming/{i}.jpg"}))[
        "MessageId"] for i in range(count)}


def test_a_worker_past_its_timeout_is_killed_and_its_batch_comes_back(
    pools: Callable[..., FunctionPool], queue: tuple[Any, str],
) -> None:
    sqs, url = queue
    ids = _send(sqs, url, 3)
    pool = pools(_spec("probe.sleep", timeout_s=1))
    result = _poll_through(pool, sqs, url)
    assert result.deleted == 0 and set(result.failed) == ids
    assert result.error is not None
    assert "Sandbox.Timedout" in result.error
    assert "Task timed out after 1.00 seconds" in result.error
    assert not pool.workers  # the killed environment is gone
    _comes_back(sqs, url, ids)


def test_a_worker_past_its_memory_size_is_killed_and_its_batch_comes_back(
    pools: Callable[..., FunctionPool], queue: tuple[Any, str],
) -> None:
    sqs, url = queue
    ids = _send(sqs, url, 2)
    pool = pools(_spec("probe.allocate", memory_mb=128, timeout_s=60))
    result = _poll_through(pool, sqs, url)
    assert result.deleted == 0 and set(result.failed) == ids
    assert result.error is not None
    assert "Runtime.OutOfMemory" in result.error
    assert "Runtime exited with error: signal: killed" in result.error
    assert not pool.workers
    _comes_back(sqs, url, ids)


def test_an_init_error_is_reported_as_lambda_does_and_no_message_is_lost(
    pools: Callable[..., FunctionPool], queue: tuple[Any, str], tmp_path: Path,
) -> None:
    """The real ingest handler, with IMGPIPE_MODEL pointing nowhere: its init fails before
    any message is touched; every invocation fails the same way, loudly, with a new cold
    start each time; the messages wait in the queue."""
    sqs, url = queue
    ids = _send(sqs, url, 2)
    missing = tmp_path / "no-model"
    pool = pools(_spec("handlers.ingest.handler", root=SOURCE_ROOT, env={
        "IMGPIPE_MODEL": str(missing), "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true"}))
    result = _poll_through(pool, sqs, url)
    assert result.deleted == 0 and set(result.failed) == ids
    assert result.error is not None and str(missing) in result.error
    assert result.error.startswith("FunctionFailed: ModelError: ")
    assert not pool.workers  # the runtime exited after reporting its init error
    again = pool.invoke(b'{"Records": []}')
    assert again.function_error == "Unhandled" and again.init_s is not None
    assert json.loads(again.payload)["errorType"] == "ModelError"
    _comes_back(sqs, url, ids)


# ---------------------------------------------------------------- the Runtime API itself


def test_runtime_api_serves_one_invocation_and_refuses_what_lambda_refuses() -> None:
    import http.client

    from imgpipe.local.runtime_api import MAX_RESPONSE_BYTES, Invocation, RuntimeApi

    api = RuntimeApi()
    try:
        invocation = Invocation(request_id="req-1", payload=b'{"a": 1}',
                                function_arn="arn:aws:lambda:us-east-1:1:function:f",
                                timeout_s=3)
        api.pending.put(invocation)
        conn = http.client.HTTPConnection(api.address, timeout=10)
        conn.request("GET", "/2018-06-01/runtime/invocation/next")
        got = conn.getresponse()
        assert (got.status, got.read()) == (200, b'{"a": 1}')
        assert got.getheader("Lambda-Runtime-Aws-Request-Id") == "req-1"
        assert got.getheader("Lambda-Runtime-Invoked-Function-Arn").endswith(":function:f")
        deadline_ms = int(got.getheader("Lambda-Runtime-Deadline-Ms"))
        assert 0 < deadline_ms - time.time() * 1000 <= 3000

        def post(path: str, body: bytes) -> int:
            conn.request("POST", f"/2018-06-01/runtime/invocation/{path}", body=body)
            answer = conn.getresponse()
            answer.read()
            return answer.status

        assert post("req-2/response", b"{}") == 400  # not the invocation in flight
        assert post("req-1/response", b"x" * (MAX_RESPONSE_BYTES + 1)) == 413
        assert invocation.done.is_set() and invocation.error
        assert json.loads(invocation.result or b"")["errorType"] == \
            "Function.ResponseSizeTooLarge"
        assert post("req-1/response", b"{}") == 403  # answered already
        conn.close()
    finally:
        api.close()


def test_worker_environment_is_lambdas_not_the_stacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgpipe.local.runtime import worker_environment

    monkeypatch.setenv("SOME_SECRET_OF_THE_DEVELOPER", "x")
    env = worker_environment(_spec("probe.echo", env={"IMGPIPE_TABLE": "t"}), "127.0.0.1:9",
                             {"PYTHONPATH": "/extra"})
    assert "SOME_SECRET_OF_THE_DEVELOPER" not in env
    assert "AWS_LAMBDA_FUNCTION_TIMEOUT" not in env  # Lambda does not set it either
    assert env["PYTHONPATH"] == f"/extra:{FUNCTIONS}"
    assert env["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9" and env["IMGPIPE_TABLE"] == "t"
    assert env["AWS_EXECUTION_ENV"].startswith("AWS_Lambda_python3.")


def test_an_event_invocation_is_accepted_at_once_and_a_failure_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import imgpipe.local.functions as functions

    monkeypatch.setattr(functions, "ASYNC_RETRY_DELAYS_S", (0.0, 0.0))
    calls: list[dict[str, Any]] = []

    def flaky(event: dict[str, Any]) -> str:
        calls.append(event)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return "done"

    host = FunctionHost()
    host.register_local("flaky", flaky)
    assert host.invoke_async("flaky", b'{"n": 1}') == (202, b"", None)
    _wait(lambda: len(calls) == 3, "two retries")
    assert calls == [{"n": 1}] * 3
    assert host.invoke_async("nobody", b"{}")[0] == 404


def test_package_mode_says_what_is_missing(tmp_path: Path) -> None:
    from imgpipe.local.stack import LocalStack, StackOptions
    from pipeline.errors import ConfigError

    package = tmp_path / "package"
    with pytest.raises(ConfigError, match="run `make package` first"):
        LocalStack(StackOptions(package=package, runtime_python=sys.executable)).code()
    (package / "handlers").mkdir(parents=True)
    with pytest.raises(ConfigError, match="run `make runtime-venv` first"):
        LocalStack(StackOptions(package=package, runtime_python=str(tmp_path / "no"))).code()
    bare = tmp_path / "python"  # an interpreter without the runtime client
    bare.write_text("#!/bin/sh\nexit 1\n")
    bare.chmod(0o755)
    with pytest.raises(ConfigError, match="cannot import awslambdaric"):
        LocalStack(StackOptions(package=package, runtime_python=str(bare))).code()
    assert LocalStack(StackOptions(package=package, runtime_python=sys.executable)).code() \
        == (package, sys.executable)
