"""The emulator's Distributed Map behaves as AWS documents it (imgpipe.local.distributed_map):
children's failures past the tolerated percentage fail the run, EXPRESS children stop at
their time limit, the ResultWriter writes its files, map-run lookups of a starting
execution and `list-executions --map-run-arn` answer."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from imgpipe.local import distributed_map
from imgpipe.local.planner import make_planner
from imgpipe.local.provision import LOCAL_PLANNER, LocalResources, provision
from pipeline.backfill import summarize
from tests.functional.conftest import execute_state_machines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Child = Callable[[dict[str, Any]], tuple[dict[str, Any], str | None]]


class Stack:
    def __init__(self, resources: LocalResources, session: Any, endpoint: str) -> None:
        self.r, self.endpoint = resources, endpoint
        self.s3 = session.client("s3", endpoint_url=endpoint)
        self.sfn = session.client("stepfunctions", endpoint_url=endpoint)
        self.child: Child = lambda event: ({"model": "m@1", "counts": {
            "classified": len(event["Items"])}}, None)

    def run(self, prefix: str, timeout_s: float = 60) -> dict[str, Any]:
        arn = self.sfn.start_execution(
            stateMachineArn=self.r.state_machine_arn, name=f"run-{uuid.uuid4()}",
            input=json.dumps({"bucket": self.r.bucket, "prefix": prefix}))["executionArn"]
        deadline = time.monotonic() + timeout_s
        while (desc := self.sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "the backfill did not finish"
            time.sleep(0.2)
        return desc  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    from moto.awslambda.models import LambdaBackend
    from moto.server import ThreadedMotoServer

    mp = pytest.MonkeyPatch()
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    mp.setenv("MOTO_PORT", str(port))
    mp.setenv("IMGPIPE_LOCAL_EXPRESS_LIMIT_S", "2")  # AWS's 300 s, shortened for the test
    session = boto3.session.Session(region_name="us-east-1", aws_access_key_id="test",
                                    aws_secret_access_key="test")
    planner = make_planner(lambda: session.client("s3", endpoint_url=endpoint))
    holder: dict[str, Stack] = {}

    def invoke(self: Any, function_name: str, qualifier: Any, body: Any, headers: Any,
               response_headers: Any) -> bytes:
        event = json.loads(body)
        st = holder["stack"]
        if function_name == LOCAL_PLANNER:
            return json.dumps(planner(event)).encode()
        if function_name.endswith(st.r.outputs["SummaryFunctionName"]):
            return json.dumps(summarize(event["map_run"], st.s3, event["request"])).encode()
        payload, error = st.child(event)
        if error:
            response_headers["x-amz-function-error"] = "Unhandled"
        return json.dumps(payload).encode()

    mp.setattr(LambdaBackend, "invoke", invoke)
    distributed_map.install(mp.setattr)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()

    execute_state_machines(endpoint, True)
    try:
        names = {"BucketName": "imgpipe-dmap", "QueueName": "imgpipe-dmap",
                 "TableName": "imgpipe-dmap", "StateMachineName": "imgpipe-dmap",
                 "BackfillBatchSize": "2", "BackfillToleratedFailurePercentage": "20"}
        resources = provision(endpoint, parameters=names, stack_name="imgpipe-dmap")
        holder["stack"] = Stack(resources, session, endpoint)
        for i in range(10):
            holder["stack"].s3.put_object(Bucket=resources.bucket, Key=f"old/{i}.jpg", Body=b"x")
        yield holder["stack"]
    finally:
        execute_state_machines(endpoint, False)
        server.stop()
        mp.undo()


def _failing(keys: set[str], error: str = "ModelError",
             message: str = "model 'nope' not found") -> Child:
    def child(event: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        if {i["Key"] for i in event["Items"]} & keys:
            return {"errorType": error, "errorMessage": message}, error
        return {"model": "m@1", "counts": {"classified": len(event["Items"])}}, None
    return child


def test_results_are_written_as_aws_documents_them(stack: Stack) -> None:
    stack.child = _failing({"old/0.jpg"})  # 1 batch of 5 (2 items of 10: 20 %, tolerated)
    desc = stack.run("old/")
    assert desc["status"] == "SUCCEEDED", desc
    summary = json.loads(desc["output"])
    assert summary["counts"]["classified"] == 8 and summary["counts"]["failed"] == 2
    assert summary["failures"][0]["cause"] == "ModelError: model 'nope' not found"
    run_arn = stack.sfn.list_map_runs(executionArn=desc["executionArn"])["mapRuns"][0][
        "mapRunArn"]
    folder = f"predictions/_backfill/{run_arn.rsplit(':', 1)[1]}/"
    manifest = json.loads(stack.s3.get_object(Bucket=stack.r.bucket, Key=folder + "manifest.json")
                          ["Body"].read())
    assert set(manifest) == {"DestinationBucket", "MapRunArn", "ResultFiles"}
    assert manifest["MapRunArn"] == run_arn
    files = manifest["ResultFiles"]
    assert [f["Key"] for f in files["SUCCEEDED"]] == [folder + "SUCCEEDED_0.json"]
    assert [f["Key"] for f in files["FAILED"]] == [folder + "FAILED_0.json"]
    assert files["PENDING"] == []
    (failed,) = json.loads(stack.s3.get_object(Bucket=stack.r.bucket, Key=folder +
                                               "FAILED_0.json")["Body"].read())
    documented = json.loads((__import__("tests.conftest").conftest.event_path(
        "result_writer/FAILED_0.json")).read_text())[0]
    assert set(failed) == set(documented)
    assert failed["Status"] == "FAILED" and failed["Error"] == "ModelError"
    children = stack.sfn.list_executions(mapRunArn=run_arn)["executions"]
    assert len(children) == 5
    assert sorted(c["status"] for c in children) == ["FAILED"] + ["SUCCEEDED"] * 4


@pytest.mark.parametrize(("error", "message"), [
    ("ModelError", "model 'nope' not found"),
    # what the local runtime reports when a batch's worker process is killed
    ("Runtime.ExitError", "RequestId: x Error: Runtime exited with error: signal: killed"),
])
def test_failures_past_the_tolerated_percentage_fail_the_run(stack: Stack, error: str,
                                                             message: str) -> None:
    """Issue 18: a model that does not exist, or a batch worker killed, failed children
    and the run still SUCCEEDED."""
    stack.child = _failing({"old/0.jpg", "old/2.jpg", "old/4.jpg"}, error, message)
    desc = stack.run("old/")
    assert desc["status"] == "FAILED", desc
    assert desc["error"] == "States.ExceedToleratedFailureThreshold"
    assert f"{error}: {message}" in desc["cause"]
    assert re.search(r"[46] of 10 items failed, more than the tolerated 20 %", desc["cause"])


def test_an_express_child_is_stopped_at_its_time_limit(stack: Stack) -> None:
    def slow(event: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        if any(i["Key"] == "old/0.jpg" for i in event["Items"]):
            time.sleep(4)  # past the (shortened) 2 s limit
        return {"model": "m@1", "counts": {"classified": len(event["Items"])}}, None

    stack.child = slow
    desc = stack.run("old/")
    assert desc["status"] == "SUCCEEDED", desc  # 1 of 5 batches: within the 20 % tolerated
    (failure,) = json.loads(desc["output"])["failures"]
    assert (failure["status"], failure["error"]) == ("FAILED", "States.Timeout")
    run_arn = stack.sfn.list_map_runs(executionArn=desc["executionArn"])["mapRuns"][0][
        "mapRunArn"]
    counts = stack.sfn.describe_map_run(mapRunArn=run_arn)["itemCounts"]
    assert (counts["timedOut"], counts["succeeded"]) == (1, 4)


@pytest.mark.parametrize("starting", ["no worker yet", "a worker without its env yet"])
def test_map_runs_of_an_execution_that_is_starting(stack: Stack, starting: str) -> None:
    """moto lists an execution before its worker exists, and the worker builds its env in
    its thread; asking for the map runs meanwhile raised AttributeError (issue 20: a
    traceback in the stack's terminal, about one backfill in four)."""
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    backend = stepfunctions_parser_backends["123456789012"]["us-east-1"]
    (machine,) = [m for m in backend.state_machines if m.name == "imgpipe-dmap"]
    execution = machine.executions[-1]
    worker = execution.exec_worker
    env = worker.env
    if starting == "no worker yet":
        execution.exec_worker = None
    else:
        worker.env = None
    try:
        assert stack.sfn.list_map_runs(executionArn=execution.exec_arn)["mapRuns"] == []
        with pytest.raises(stack.sfn.exceptions.ResourceNotFound):
            stack.sfn.describe_map_run(mapRunArn=execution.exec_arn.replace(
                ":execution:", ":mapRun:") + "/Backfill:x")
    finally:
        execution.exec_worker = worker
        worker.env = env
