"""IAM on the local stack: every AWS call the functions make is recorded and checked against
their roles' policies as the translated template deployed them (tests/iam_calls.py). The
emulator itself enforces no IAM: moto's access control (INITIAL_NO_AUTH_ACTION_COUNT)
evaluates S3 and SQS resources but passes "*" as the resource of every DynamoDB call, so
it refuses a role whose DynamoDB grant names the table, as ours does (and it evaluates no
condition but a trust policy's).

Every e2e test that starts `imgpipe local` runs this check when it stops the stack
(tests/e2e/conftest.py); here: every function's path once, and the proof that a permission
removed from the template fails the check though the emulator lets the call through."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgpipe.local.provision import DEFAULT_TEMPLATE, load_sam_template
from imgpipe.local.stack import LocalStack, StackOptions, free_port
from tests.iam_calls import check_calls, permissions_used

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
COFFEE = (ROOT / "samples" / "coffee.jpg").read_bytes()
ACCOUNT = "123456789012"
TABLE_ARN = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/imgpipe-predictions"


def _stack(log: Path, template: Path | None = None) -> LocalStack:
    return LocalStack(StackOptions(port=free_port(), log_level="ERROR", call_log=log,
                                   template=template))


def _wait_for_record(stack: LocalStack, key: str) -> None:
    r = stack.resources
    assert r is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        items = stack.client("dynamodb").scan(TableName=r.table)["Items"]
        if any(i["image"]["S"] == f"s3://{r.bucket}/{key}" for i in items):
            return
        time.sleep(0.5)
    raise AssertionError(f"no record for {key}")


def _post(url: str, body: bytes, content_type: str) -> Any:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def every_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """Ingest, the HTTP API (classify, presigned upload) and a backfill with its summary,
    on one stack; the call log and the check's findings."""
    log = tmp_path_factory.mktemp("calls") / "calls.jsonl"
    with _stack(log) as stack:
        r = stack.resources
        assert r is not None and stack.api_url
        s3 = stack.client("s3")
        s3.put_object(Bucket=r.bucket, Key="incoming/coffee.jpg", Body=COFFEE)
        _wait_for_record(stack, "incoming/coffee.jpg")
        _post(stack.api_url + "/classify", COFFEE, "image/jpeg")
        _post(stack.api_url + "/uploads",
              json.dumps({"filename": "cup.jpg", "content_type": "image/jpeg"}).encode(),
              "application/json")
        s3.put_object(Bucket=r.bucket, Key="archive/cup.jpg", Body=COFFEE + b"\0")
        sfn = stack.client("stepfunctions")
        run = sfn.start_execution(stateMachineArn=r.state_machine_arn,
                                  input=json.dumps({"bucket": r.bucket, "prefix": "archive/"}))
        deadline = time.monotonic() + 300
        while (desc := sfn.describe_execution(executionArn=run["executionArn"]))[
                "status"] == "RUNNING":
            assert time.monotonic() < deadline, "the backfill did not finish"
            time.sleep(1)
        assert desc["status"] == "SUCCEEDED", desc
        yield log, check_calls(stack.endpoint_url, log)


def test_every_call_of_every_function_is_allowed_by_its_role(
        every_path: tuple[Path, list[str]]) -> None:
    log, problems = every_path
    assert problems == []
    used = {(fn.split("-")[1] if "-" in fn else fn, action, resource)
            for fn, action, resource in permissions_used(log, ACCOUNT)}
    functions = {fn for fn, _, _ in used}
    # the summary reads the ResultWriter's manifest and result files, as on AWS
    assert {"IngestFunction", "ApiFunction", "BackfillFunction", "SummaryFunction"} <= functions
    assert any(fn == "SummaryFunction" and action == "s3:GetObject" for fn, action, _ in used)
    assert ("IngestFunction", "s3:GetObject", "arn:aws:s3:::imgpipe-local/incoming/coffee.jpg") \
        in used
    assert ("IngestFunction", "dynamodb:PutItem", TABLE_ARN) in used
    assert ("BackfillFunction", "s3:GetObject", "arn:aws:s3:::imgpipe-local/archive/cup.jpg") \
        in used
    # the presigned POST, which S3 authorizes with the API function's role when it is used
    assert any(fn == "ApiFunction" and action == "s3:PutObject"
               and res.startswith("arn:aws:s3:::imgpipe-local/incoming/")
               for fn, action, res in used)


def _without_action(function: str, action: str, dest: Path) -> Path:
    """infra/template.yaml with `action` taken out of `function`'s role statements."""
    sam = load_sam_template(DEFAULT_TEMPLATE)
    removed = 0
    for policy in sam["Resources"][function]["Properties"]["Policies"]:
        for statement in policy.get("Statement", []) if isinstance(policy, dict) else []:
            actions = statement["Action"] if isinstance(statement["Action"], list) \
                else [statement["Action"]]
            if action in actions:
                statement["Action"] = [a for a in actions if a != action]
                removed += 1
    assert removed, f"{function}'s role has no {action}: the test needs another permission"
    dest.write_text(json.dumps(sam, indent=1), encoding="utf-8")
    return dest


def test_a_permission_removed_from_the_template_fails_the_check(tmp_path: Path) -> None:
    template = _without_action("IngestFunction", "dynamodb:PutItem", tmp_path / "t.json")
    log = tmp_path / "calls.jsonl"
    with _stack(log, template) as stack:
        r = stack.resources
        assert r is not None
        stack.client("s3").put_object(Bucket=r.bucket, Key="incoming/coffee.jpg", Body=COFFEE)
        _wait_for_record(stack, "incoming/coffee.jpg")  # the emulator let the write through
        problems = check_calls(stack.endpoint_url, log)
    assert len(problems) == 1, problems
    assert problems[0].startswith("imgpipe-IngestFunction-")
    assert f"dynamodb:PutItem on {TABLE_ARN} (dynamodb PutItem): implicitly denied by the " \
           f"role arn:aws:iam::{ACCOUNT}:role/" in problems[0]
