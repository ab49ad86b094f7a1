"""The local stack stops a backfill child at the EXPRESS limit, as AWS does (5 minutes,
Retry attempts and delays included): a batch made to run long ends TIMED_OUT, a failure
that counts against the tolerated percentage. The limit is AWS's 300 s; the emulator
reads IMGPIPE_LOCAL_EXPRESS_LIMIT_S so that this test can shorten it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from imgpipe.local.stack import LocalStack, StackOptions, free_port
from tests.tiny_models import EFFICIENTNET_LITE0, make_tiny_model

pytestmark = pytest.mark.e2e

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions" / "faults"


def test_a_child_that_runs_too_long_times_out(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPIPE_LOCAL_EXPRESS_LIMIT_S", "4")  # the emulator's; AWS: 300
    model = make_tiny_model(tmp_path / "tiny", EFFICIENTNET_LITE0)
    options = StackOptions(port=free_port(), log_level="ERROR", poll=False, function_env={
        "PYTHONPATH": str(FUNCTIONS), "IMGPIPE_TEST_SLOW_KEYS": "slow-",
        "IMGPIPE_TEST_SLOW_SECONDS": "10"})
    with LocalStack(options) as stack:
        r = stack.resources
        assert r is not None
        s3, sfn = stack.client("s3"), stack.client("stepfunctions")
        s3.put_object(Bucket=r.bucket, Key="long/slow-1.png", Body=b"\x89PNG not read")
        started = sfn.start_execution(stateMachineArn=r.state_machine_arn, input=json.dumps(
            {"bucket": r.bucket, "prefix": "long/", "model": str(model.directory)}))
        deadline = time.monotonic() + 120
        while (desc := sfn.describe_execution(executionArn=started["executionArn"]))[
                "status"] == "RUNNING":
            assert time.monotonic() < deadline, "the backfill did not end"
            time.sleep(0.5)
        assert desc["status"] == "FAILED", desc
        assert desc["error"] == "States.ExceedToleratedFailureThreshold"
        assert "States.Timeout" in desc["cause"], desc["cause"]
        (run,) = sfn.list_map_runs(executionArn=started["executionArn"])["mapRuns"]
        counts = sfn.describe_map_run(mapRunArn=run["mapRunArn"])["itemCounts"]
        assert (counts["timedOut"], counts["succeeded"]) == (1, 0)
        (child,) = sfn.list_executions(mapRunArn=run["mapRunArn"])["executions"]
        assert child["status"] == "TIMED_OUT"
