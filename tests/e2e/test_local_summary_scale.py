"""Issue 17: the summary function reads a million objects' ResultWriter output (AWS's
documented format: manifest plus SUCCEEDED_n.json files, each child's entry carrying its
~14 KB input string) within its template memory (512 MB, enforced by `imgpipe local`) and
timeout, through `aws lambda invoke`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import boto3
import pytest

from tests.e2e.conftest import start_local, stop_local

pytestmark = pytest.mark.e2e

OBJECTS = 1_000_000
BATCH = 64
# AWS starts a new file past 5 GB: the results come in one ~215 MB file; a second, small
# one exercises the manifest's list.
SMALL_FILE_BATCHES = 100


def _entry(i: int, items: int) -> bytes:
    batch = {"BatchInput": {"bucket": "imgpipe-local", "model": "", "overwrite": False},
             "Items": [{"Etag": '"05704fbdccb224cb01c59005bebbad28"',
                        "Key": f"archive/2019/camera-roll/{i:06d}/IMG_{j:04d}.jpg",
                        "LastModified": 1668699881, "Size": 3491000 + j,
                        "StorageClass": "STANDARD"} for j in range(items)]}
    output = {"model": "efficientnet-lite0@1", "counts": {
        "classified": items - 1, "skipped": 1, "rejected": 0, "gone": 0, "superseded": 0,
        "failed": 0, "ignored": 0}}
    name = f"{i:08d}-abab-3b27-9a77-a277e463b709"
    return json.dumps({
        "ExecutionArn": "arn:aws:states:us-east-1:123456789012:execution:"
                        f"imgpipe-backfill/Backfill:{name}",
        "Input": json.dumps(batch, separators=(",", ":")), "InputDetails": {"Included": True},
        "Name": name, "Output": json.dumps(output, separators=(",", ":")),
        "OutputDetails": {"Included": True}, "RedriveCount": 0,
        "RedriveStatus": "NOT_REDRIVABLE",
        "RedriveStatusReason": "Execution is SUCCEEDED and cannot be redriven",
        "StartDate": "2025-02-04T01:49:50.099Z",
        "StateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:"
                           "imgpipe-backfill/Backfill:ad9b5f27",
        "Status": "SUCCEEDED", "StopDate": "2025-02-04T01:49:50.163Z"},
        separators=(",", ":")).encode()


def test_a_million_objects_are_summarized_in_512_mb(tmp_path: Path) -> None:
    summarize_a_million(tmp_path)


def summarize_a_million(tmp_path: Path, *stack_args: str) -> None:
    """Write the result files into `imgpipe local STACK_ARGS`, invoke its summary function
    on them, check the sums and the memory it used (printed with the time)."""
    stack = start_local(tmp_path, "-v", *stack_args)
    try:
        s3 = boto3.session.Session(region_name="us-east-1", aws_access_key_id="test",
                                   aws_secret_access_key="test").client(
            "s3", endpoint_url=stack.endpoint)
        batches = -(-OBJECTS // BATCH)
        folder = "predictions/_backfill/ad9b5f27-090b-3ac6-9beb-243cd77144a7/"
        files, total_bytes = [], 0
        split = batches - SMALL_FILE_BATCHES
        for n, (first, last) in enumerate(((0, split), (split, batches))):
            entries = [_entry(i, min(BATCH, OBJECTS - i * BATCH)) for i in range(first, last)]
            body = b"[" + b",".join(entries) + b"]"
            key = f"{folder}SUCCEEDED_{n}.json"
            s3.put_object(Bucket="imgpipe-local", Key=key, Body=body)
            files.append({"Key": key, "Size": len(body)})
            total_bytes += len(body)
        assert total_bytes > 200_000_000  # ~14 KB a batch, as the issue measured
        manifest = {"DestinationBucket": "imgpipe-local", "MapRunArn": "arn:x",
                    "ResultFiles": {"FAILED": [], "PENDING": [], "SUCCEEDED": files}}
        s3.put_object(Bucket="imgpipe-local", Key=folder + "manifest.json",
                      Body=json.dumps(manifest).encode())
        functions = stack.aws("lambda", "list-functions")["Functions"]
        summary_fn = next(f for f in functions if f["Handler"] == "handlers.summary.handler")
        assert (summary_fn["MemorySize"], summary_fn["Timeout"]) == (512, 60)
        event = tmp_path / "event.json"
        event.write_text(json.dumps({"request": {"bucket": "imgpipe-local", "prefix": "archive/"},
                                     "map_run": {"MapRunArn": "arn:x", "ResultWriterDetails": {
                                         "Bucket": "imgpipe-local",
                                         "Key": folder + "manifest.json"}}}))
        out = tmp_path / "out.json"
        started = time.monotonic()
        meta = stack.aws("lambda", "invoke", "--function-name", summary_fn["FunctionName"],
                         "--cli-read-timeout", "120",
                         "--payload", f"fileb://{event}", str(out))
        elapsed = time.monotonic() - started
        assert meta.get("StatusCode") == 200 and "FunctionError" not in meta, \
            (meta, out.read_text()[:2000], "".join(stack.output[-20:]))
        summary = json.loads(out.read_text())
        assert summary["images"] == OBJECTS
        assert summary["counts"]["skipped"] == batches
        assert summary["counts"]["classified"] == OBJECTS - batches
        time.sleep(0.5)
        reports = [line for line in stack.output if "REPORT" in line
                   and summary_fn["FunctionName"] in line]
        used = int(re.search(r"Max Memory Used: (\d+) MB", reports[-1]).group(1))  # type: ignore[union-attr]
        print(f"summary of {OBJECTS} objects ({total_bytes / 1e6:.0f} MB of results in "
              f"{len(files)} files): {elapsed:.1f} s, peak {used} MB; {reports[-1].strip()}")
        assert used < 512
    finally:
        stop_local(stack)
