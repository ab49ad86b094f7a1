"""A local backfill of 3,000 objects, some of them hit by transient S3 faults.

The listing is twice what one Step Functions state may carry (256 KB: ~1,500 keys) and
three ListObjectsV2 pages,
so this passes only if no state holds it; the faulty objects are classified only if the
state machine's Retry on `BackfillIncomplete` runs their batches again. Plumbing, so tiny
PNGs and a tiny model (tests/tiny_models.py); the functions are the real ones, in their
Runtime API workers, with the faults injected into those processes only.
"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imgpipe.local.stack import LocalStack, StackOptions, free_port
from tests.tiny_models import EFFICIENTNET_LITE0, make_tiny_model

pytestmark = pytest.mark.e2e

OBJECTS = 3_000
FAULTY = "faulty-"  # every 100th key: 30 objects fail on their first read in a worker
FAULTS = Path(__file__).resolve().parents[1] / "functions" / "faults"


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 90)).save(buf, "PNG")
    return buf.getvalue()


def _count_items(ddb: Any, table: str) -> dict[str, int]:
    statuses: dict[str, int] = {}
    kwargs: dict[str, Any] = {"TableName": table, "ProjectionExpression": "#s",
                              "ExpressionAttributeNames": {"#s": "status"}}
    while True:
        page = ddb.scan(**kwargs)
        for item in page["Items"]:
            statuses[item["status"]["S"]] = statuses.get(item["status"]["S"], 0) + 1
        if "LastEvaluatedKey" not in page:
            return statuses
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def test_backfill_of_3000_objects_with_transient_faults(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny", EFFICIENTNET_LITE0)
    options = StackOptions(port=free_port(), log_level="ERROR", poll=False, function_env={
        "PYTHONPATH": str(FAULTS), "IMGPIPE_TEST_FAULTY_KEYS": FAULTY})
    with LocalStack(options) as stack:
        r = stack.resources
        assert r is not None
        s3, sfn = stack.client("s3"), stack.client("stepfunctions")
        keys = [f"archive/{FAULTY if i % 100 == 0 else ''}{i:05d}.png" for i in range(OBJECTS)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket=r.bucket, Key=k,
                                                  Body=_png(int(k[-9:-4]))), keys))

        started = sfn.start_execution(stateMachineArn=r.state_machine_arn, input=json.dumps(
            {"bucket": r.bucket, "prefix": "archive/", "model": str(model.directory)}))
        deadline = time.monotonic() + 1200
        while (desc := sfn.describe_execution(executionArn=started["executionArn"]))[
                "status"] == "RUNNING":
            assert time.monotonic() < deadline, "the backfill did not finish in 20 minutes"
            time.sleep(2)
        assert desc["status"] == "SUCCEEDED", desc
        summary = json.loads(desc["output"])
        counts = summary["counts"]
        # Each faulty object failed its batch's first attempt (BackfillIncomplete); the
        # state machine's Retry ran the batch again, which skipped what the first attempt
        # had finished and counts it as classified by this run (its records are newer than
        # the execution's start, BatchInput.run_started): nothing was done before the run.
        assert counts["classified"] == OBJECTS and counts["skipped"] == 0, summary
        assert counts["failed"] == 0 and summary["failed_batches"] == 0
        assert summary["models"] == ["tiny-efficientnet@1"]

        # The same batches as the ItemBatcher's on AWS: 64 keys each, in listing order.
        history = sfn.get_execution_history(executionArn=started["executionArn"],
                                            maxResults=1000)["events"]
        planned = [json.loads(e["taskSucceededEventDetails"]["output"])["Payload"]
                   for e in history if e["type"] == "TaskSucceeded"
                   and "local-plans/" in e["taskSucceededEventDetails"]["output"]]
        assert [(p["objects"], p["batches"]) for p in planned] == [(OBJECTS, -(-OBJECTS // 64))]
        batches = json.loads(s3.get_object(Bucket=planned[0]["Bucket"],
                                           Key=planned[0]["Key"])["Body"].read())
        assert [len(b["Items"]) for b in batches] == [64] * (OBJECTS // 64) + [OBJECTS % 64]
        assert [i["Key"] for b in batches for i in b["Items"]] == sorted(keys)

        assert _count_items(stack.client("dynamodb"), r.table) == {"classified": OBJECTS}

