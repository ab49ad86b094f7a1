"""`imgpipe local --state-dir`: the stack's data survives kill -9 and a restart."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
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


def _api_url(lp: LocalProcess) -> str:
    return next(line.split("=", 1)[1].strip() for line in lp.output
                if "export IMGPIPE_API_URL=" in line)


def _upload_by_presigned_post(lp: LocalProcess, photo: Path) -> str:
    """As the upload page does: ask the HTTP API for a presigned POST, send the form to
    S3 (its credential is in the form body, not in a header or the query)."""
    ask = urllib.request.Request(_api_url(lp) + "/uploads", method="POST",
                                 headers={"Content-Type": "application/json"},
                                 data=json.dumps({"filename": photo.name,
                                                  "content_type": "image/jpeg"}).encode())
    with urllib.request.urlopen(ask, timeout=60) as r:
        presigned = json.loads(r.read())
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in presigned["fields"].items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename='
                 f'"{photo.name}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
                 + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    form = urllib.request.Request(presigned["url"], data=b"".join(parts), method="POST",
                                  headers={"Content-Type":
                                           f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(form, timeout=60) as r:
        assert r.status in (200, 201, 204)
    return str(presigned["image"])


def _upload_by_unsigned_put(lp: LocalProcess, photo: Path) -> str:
    key = f"incoming/{photo.name}"
    put = urllib.request.Request(f"{lp.endpoint}/{BUCKET}/{key}", data=photo.read_bytes(),
                                 method="PUT", headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(put, timeout=60) as r:
        assert r.status == 200
    return f"s3://{BUCKET}/{key}"


def test_state_survives_kill_9_and_a_restart(tmp_path: Path) -> None:
    """Uploads by the aws CLI (signed), by the upload page's presigned POST and by an
    unsigned PUT are all journaled: after kill -9 and a restart, every one is back."""
    state = tmp_path / "state"
    first = start_local(tmp_path, "--state-dir", str(state))
    try:
        assert f"State is kept in {state}" in "".join(first.output)
        coffee, chelsea, rocket = (ROOT / "samples" / f"{name}.jpg" for name in PHOTOS)
        first.aws("s3", "cp", str(coffee), f"s3://{BUCKET}/incoming/coffee.jpg")
        images = [f"s3://{BUCKET}/incoming/coffee.jpg",
                  _upload_by_presigned_post(first, chelsea),
                  _upload_by_unsigned_put(first, rocket)]
        for image in images:
            first.wait_for_item(TABLE, image, MODEL)
        url = _sqs(first, "get-queue-url", "--queue-name", "imgpipe-ingest-dlq")["QueueUrl"]
        _sqs(first, "send-message", "--queue-url", url, "--message-body", "a dead letter")
        keys, records = _keys(first), _records(first)
    finally:
        _kill_9(first)
    assert sorted(records) == sorted(images)
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
