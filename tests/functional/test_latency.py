"""`imgpipe local --latency` in a real emulator process: started as the stack starts it, it
delays nothing; with a table, each operation answers no sooner than its figure (a lower
bound: nothing here asserts that anything is fast), and operations the table leaves out
are not delayed."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgpipe.local.latency import latency_status, set_latency
from imgpipe.local.provision import local_session
from imgpipe.local.stack import _spawn_emulator, _wait_until_listening, free_port

BUCKET = "latency-test"
TINY = {"operations": {
    "s3": {"HeadObject": {"ms": 200}, "GetObject": {"ms": 0, "mb_per_s": 1}},
    "dynamodb": {"ListTables": {"ms": 200}},
}}


@contextlib.contextmanager
def emulator(*latency: str) -> Iterator[str]:
    port = free_port()
    proc = _spawn_emulator("127.0.0.1", port, "http://127.0.0.1:9", None, *latency)
    try:
        _wait_until_listening("127.0.0.1", port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def timed(call: Any, *args: Any, **kwargs: Any) -> float:
    started = time.perf_counter()
    result = call(*args, **kwargs)
    if isinstance(result, dict) and "Body" in result:
        result["Body"].read()
    return time.perf_counter() - started


def test_each_operation_waits_its_figure_and_none_is_the_default(tmp_path: Path) -> None:
    table = tmp_path / "tiny.json"
    table.write_text(json.dumps(TINY))
    with emulator() as url:  # the stack's default: no --latency
        session = local_session("us-east-1")
        s3 = session.client("s3", endpoint_url=url)
        dynamodb = session.client("dynamodb", endpoint_url=url)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="a.bin", Body=b"x" * 200_000)
        s3.head_object(Bucket=BUCKET, Key="a.bin")
        assert latency_status(url) == {"profile": "none", "operations": {}, "delayed": {}}

        set_latency(url, str(table))
        assert timed(s3.head_object, Bucket=BUCKET, Key="a.bin") >= 0.2
        assert timed(dynamodb.list_tables) >= 0.2
        # 200 KB at 1 MB/s: the body's time, scaled by the bytes sent
        assert timed(s3.get_object, Bucket=BUCKET, Key="a.bin") >= 0.2
        s3.put_object(Bucket=BUCKET, Key="b.bin", Body=b"y")  # not in the table
        delayed = latency_status(url)["delayed"]
        assert set(delayed) == {"s3 HeadObject", "s3 GetObject", "dynamodb ListTables"}
        assert delayed["s3 GetObject"] == {"requests": 1, "seconds": pytest.approx(0.2)}


def test_the_emulator_refuses_a_table_it_cannot_read() -> None:
    port = free_port()
    proc = _spawn_emulator("127.0.0.1", port, "http://127.0.0.1:9", None, "fast")
    try:
        assert proc.wait(timeout=60) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
