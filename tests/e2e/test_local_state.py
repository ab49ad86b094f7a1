"""`imgpipe local --state-dir`: the stack's data survives kill -9 and a restart."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import BIN, ROOT, LocalProcess, start_local, stop_local

BUCKET = "imgpipe-local"
TABLE = "imgpipe-predictions"
MODEL = "efficientnet-lite0@1"
PHOTOS = ("coffee", "chelsea", "rocket")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _kill_9(lp: LocalProcess) -> None:
    lp.proc.send_signal(signal.SIGKILL)
    lp.proc.wait(timeout=30)
    deadline = time.monotonic() + 30  # the emulator child notices and exits by itself
    while not _port_is_free(lp.port):
        assert time.monotonic() < deadline, "the emulator outlived its stack by 30 s"
        time.sleep(0.2)


def _keys(lp: LocalProcess) -> list[str]:
    listing = lp.aws("s3api", "list-objects-v2", "--bucket", BUCKET)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _records(lp: LocalProcess) -> dict[str, str]:
    items = lp.aws("dynamodb", "scan", "--table-name", TABLE, "--consistent-read")["Items"]
    return {i["image"]["S"]: i["etag"]["S"] for i in items}


def _sqs(lp: LocalProcess, *args: str) -> Any:
    # The CLI's SQS client ignores AWS_ENDPOINT_URL for us-east-1's legacy endpoint.
    return lp.aws("sqs", "--endpoint-url", lp.endpoint, *args)


def _dlq_bodies(lp: LocalProcess) -> list[str]:
    url = _sqs(lp, "get-queue-url", "--queue-name", "imgpipe-ingest-dlq")["QueueUrl"]
    got = _sqs(lp, "receive-message", "--queue-url", url, "--max-number-of-messages", "10",
               "--visibility-timeout", "0")
    return sorted(m["Body"] for m in got.get("Messages", [])) if got else []


def test_state_survives_kill_9_and_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start_local(tmp_path, "--state-dir", str(state))
    try:
        assert f"State is kept in {state}" in "".join(first.output)
        for name in PHOTOS:
            first.aws("s3", "cp", str(ROOT / "samples" / f"{name}.jpg"),
                      f"s3://{BUCKET}/incoming/{name}.jpg")
        for name in PHOTOS:
            first.wait_for_item(TABLE, f"s3://{BUCKET}/incoming/{name}.jpg", MODEL)
        url = _sqs(first, "get-queue-url", "--queue-name", "imgpipe-ingest-dlq")["QueueUrl"]
        _sqs(first, "send-message", "--queue-url", url, "--message-body", "a dead letter")
        keys, records = _keys(first), _records(first)
    finally:
        _kill_9(first)
    assert len(keys) == 2 * len(PHOTOS) and len(records) == len(PHOTOS)

    second = start_local(tmp_path, "--state-dir", str(state), port=first.port)
    try:
        banner = "".join(second.output)
        assert "restored" in banner and "1 queued message(s)" in banner, banner
        assert _keys(second) == keys, "objects and output documents are back"
        assert _records(second) == records, "records are back, with the same ETags"
        assert _dlq_bodies(second) == ["a dead letter"]
        reconcile = subprocess.run([str(BIN / "imgpipe"), "reconcile", "--queue", "", "--json"],
                                   env=second.env, capture_output=True, text=True, timeout=60)
        report = json.loads(reconcile.stdout)
        assert report["ok"] and not report["empty"] and report["objects"] == len(PHOTOS)
    finally:
        stop_local(second)


def test_without_a_state_dir_the_banner_says_nothing_survives(tmp_path: Path) -> None:
    lp = start_local(tmp_path)
    try:
        assert "NOTHING SURVIVES A STOP" in "".join(lp.output)
    finally:
        stop_local(lp)
