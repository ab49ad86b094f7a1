"""The template's correctness and security gates pass on infra/template.yaml, and each one
fails on a deliberately broken copy: a `*` resource on S3 actions, a visibility timeout
below the rule, a missing Retry (tests/template_gates.py holds the gates)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from imgpipe.local.provision import load_sam_template, translate_template
from tests import template_gates as gates


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return gates.load()


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translate_template(gates.TEMPLATE, {})


def _write(tmp_path: Path, sam: dict[str, Any]) -> Path:
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(sam, sort_keys=False), encoding="utf-8")
    return path


def _cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(path)],
                          capture_output=True, text=True, timeout=180)


# ---------------------------------------------------------------- the template passes


def test_checkov_passes_with_each_skip_justified(translated: dict[str, Any]) -> None:
    skips = gates.checkov_skips()
    assert skips, "infra/checkov-skips.txt lists nothing"
    for check_id, reason in skips.items():
        assert check_id.startswith("CKV_"), check_id
        assert len(reason.split()) >= 5, f"{check_id} needs a one-line reason"
    report = gates.checkov_report(translated, skips)
    summary = report["summary"]
    print(f"checkov: passed {summary['passed']}, failed {summary['failed']}, "
          f"skipped {summary['skipped']}")
    assert summary["failed"] == 0, gates.failed_checks(report)
    assert summary["passed"] > 30
    # Every skip is still needed: a check that no longer fires leaves the list.
    used = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert used == set(skips), f"skips that no longer fire: {sorted(set(skips) - used)}"


def test_checkov_passes_with_an_existing_bucket() -> None:
    translated = translate_template(gates.TEMPLATE, {"ExistingBucketName": "my-photos"})
    report = gates.checkov_report(translated)
    assert report["summary"]["failed"] == 0, gates.failed_checks(report)


def test_retry_names_every_error_raised_for_retry(sam: dict[str, Any]) -> None:
    classes = gates.retry_classes()
    assert "BackfillIncomplete" in classes  # what handlers/backfill.py raises
    assert gates.retry_violations(sam) == []


def test_visibility_timeout_follows_the_rule(sam: dict[str, Any]) -> None:
    assert gates.visibility_violations(sam) == []


def test_roles_allow_exactly_what_the_code_calls(
    sam: dict[str, Any], translated: dict[str, Any]
) -> None:
    called = gates.code_actions("handlers.ingest.handler")
    assert {"s3:GetObject", "s3:PutObject", "dynamodb:PutItem"} <= set(called)
    assert gates.iam_violations(sam, translated) == []
    assert gates.wildcard_violations(translated) == []


def test_state_machine_role_allows_what_step_functions_calls_for_its_states(
    sam: dict[str, Any], translated: dict[str, Any]
) -> None:
    definition = sam["Resources"]["BackfillStateMachine"]["Properties"]["Definition"]
    calls = gates.state_calls(definition)
    assert {"s3:ListBucket", "s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts",
            "s3:AbortMultipartUpload", "states:StartExecution", "states:DescribeExecution",
            "states:StopExecution", "lambda:InvokeFunction"} == set(calls)
    assert gates.state_machine_violations(sam, translated) == []
    with_key = translate_template(gates.TEMPLATE, {
        "ExistingBucketName": "my-photos",
        "KmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/abcd"})
    assert gates.state_machine_violations(sam, with_key) == []
    assert gates.iam_violations(sam, with_key) == []


def test_calls_are_followed_function_by_function(tmp_path: Path) -> None:
    """A module's other functions do not widen a role; what a handler reaches does, through
    imports, classes (all their methods) and top-level statements (run at init)."""
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "store.py").write_text(
        "def read(s3):\n    return s3.get_object(Bucket='b', Key='k')\n\n\n"
        "def listing(s3):\n    return s3.get_paginator('list_objects_v2')\n\n\n"
        "class Table:\n    def put(self, ddb):\n        ddb.put_item(TableName='t', Item={})\n"
    )
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "fn.py").write_text(
        "from pipeline.store import Table, read\n\nCLIENT = None\n\n\n"
        "def handler(event, context):\n    return read(CLIENT)\n\n\n"
        "def other(event, context):\n    return Table()\n"
    )
    called = gates.code_actions("handlers.fn.handler", tmp_path)
    assert called == {"s3:GetObject": ["pipeline/store.py:2 .get_object()"]}
    assert set(gates.code_actions("handlers.fn.other", tmp_path)) == {"dynamodb:PutItem"}


def test_cfn_lint_is_clean_on_the_raw_template() -> None:
    result = _cfn_lint(gates.TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- broken templates fail


def test_a_wildcard_s3_resource_fails_checkov_and_the_iam_gates(
    sam: dict[str, Any], tmp_path: Path
) -> None:
    broken = copy.deepcopy(sam)
    policies = broken["Resources"]["IngestFunction"]["Properties"]["Policies"]
    policies[0]["Statement"].append({"Sid": "Everything", "Effect": "Allow",
                                     "Action": ["s3:GetObject", "s3:PutObject"],
                                     "Resource": "*"})
    translated = translate_template(_write(tmp_path, broken), {})
    report = gates.checkov_report(translated)
    assert report["summary"]["failed"] > 0
    assert any(line.endswith("AWS::IAM::Role.IngestFunctionRole")
               for line in gates.failed_checks(report)), gates.failed_checks(report)
    assert gates.wildcard_violations(translated) == ['IngestFunctionRole Everything: '
                                                     'resource "*"']


def test_an_extra_or_missing_action_fails_the_iam_gate(
    sam: dict[str, Any], tmp_path: Path
) -> None:
    broken = copy.deepcopy(sam)
    statements = broken["Resources"]["BackfillFunction"]["Properties"]["Policies"][0][
        "Statement"]
    records = next(s for s in statements if s["Sid"] == "Records")
    records["Action"] = ["dynamodb:PutItem", "dynamodb:Query"]  # BatchGetItem gone
    translated = translate_template(_write(tmp_path, broken), {})
    problems = gates.iam_violations(broken, translated)
    assert "BackfillFunctionRole allows dynamodb:Query, which handlers.backfill.handler never " \
           "calls" in problems
    assert any(p.startswith("BackfillFunctionRole lacks dynamodb:BatchGetItem, called at "
                            "pipeline/table.py:") for p in problems), problems


def test_a_role_without_list_bucket_fails_the_iam_gate(
    sam: dict[str, Any], tmp_path: Path
) -> None:
    """Without s3:ListBucket a deleted photo answers 403, as a denial does: the gate knows
    S3 evaluates it for GetObject (REQUIRED_WITH)."""
    broken = copy.deepcopy(sam)
    statements = broken["Resources"]["IngestFunction"]["Properties"]["Policies"][0][
        "Statement"]
    statements[:] = [st for st in statements if st["Sid"] != "TellMissingFromDenied"]
    problems = gates.iam_violations(broken, translate_template(_write(tmp_path, broken), {}))
    assert problems == ["IngestFunctionRole lacks s3:ListBucket, AWS evaluates it: S3 answers "
                        "a missing key 404 only with it (else 403), for s3:GetObject"]


def test_a_result_writer_without_its_documented_policy_fails(
    sam: dict[str, Any], tmp_path: Path
) -> None:
    broken = copy.deepcopy(sam)
    statements = broken["Resources"]["BackfillStateMachine"]["Properties"]["Policies"][0][
        "Statement"]
    report = next(st for st in statements if st["Sid"] == "WriteRunReport")
    report["Action"] = ["s3:PutObject", "s3:ListMultipartUploadParts",
                        "s3:AbortMultipartUpload"]  # what the role had before
    translated = translate_template(_write(tmp_path, broken), {})
    assert gates.state_machine_violations(broken, translated) == [
        "BackfillStateMachineRole lacks s3:GetObject, which Step Functions calls for "
        "ClassifyObjects"]
    # And a grant no state needs any more (a manifest read instead of a listing) fails.
    unknown = copy.deepcopy(sam)
    definition = unknown["Resources"]["BackfillStateMachine"]["Properties"]["Definition"]
    definition["States"]["ClassifyObjects"]["ItemReader"]["Resource"] = \
        "arn:aws:states:::s3:getObject"
    definition["States"]["ClassifyObjects"]["ItemReader"]["ReaderConfig"] = {
        "InputType": "MANIFEST"}
    problems = gates.state_machine_violations(unknown, translate_template(
        _write(tmp_path, unknown), {}))
    assert "BackfillStateMachineRole allows s3:ListBucket, which no state of " \
           "BackfillStateMachine needs" in problems


def test_the_ingest_pollers_permissions_are_checked(
    sam: dict[str, Any], translated: dict[str, Any], tmp_path: Path
) -> None:
    """The mapping is written out (so it can wait for the log group), so SAM no longer adds
    the poller's policy by itself: the gate notices when it is missing."""
    assert gates.event_source_violations(translated) == []
    broken = copy.deepcopy(sam)
    policies = broken["Resources"]["IngestFunction"]["Properties"]["Policies"]
    policies[:] = [p for p in policies if p != "AWSLambdaSQSQueueExecutionRole"]
    assert gates.event_source_violations(translate_template(_write(tmp_path, broken), {})) == [
        f"IngestFunctionRole lacks {action}, which Lambda's poller calls for IngestEventSource"
        for action in ("sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage")]


def test_a_visibility_timeout_below_the_rule_fails(sam: dict[str, Any]) -> None:
    literal = copy.deepcopy(sam)
    literal["Resources"]["IngestQueue"]["Properties"]["VisibilityTimeout"] = 300
    assert gates.visibility_violations(literal)[0].startswith(
        "the ingest queue's VisibilityTimeout is 300")
    low_entry = copy.deepcopy(sam)
    low_entry["Mappings"]["QueueVisibility"]["120"]["5"] = 600
    assert gates.visibility_violations(low_entry) == [
        "QueueVisibility[120][5] = 600, below 6 x 120 + 5 = 725"]
    free_timeout = copy.deepcopy(sam)
    del free_timeout["Parameters"]["FunctionTimeout"]["AllowedValues"]
    assert gates.visibility_violations(free_timeout)


def test_a_missing_retry_fails(sam: dict[str, Any], tmp_path: Path) -> None:
    broken = copy.deepcopy(sam)
    definition = broken["Resources"]["BackfillStateMachine"]["Properties"]["Definition"]
    task = definition["States"]["ClassifyObjects"]["ItemProcessor"]["States"]["ClassifyBatch"]
    task["Retry"] = [r for r in task["Retry"] if "BackfillIncomplete" not in r["ErrorEquals"]]
    assert gates.retry_violations(broken) == [
        "BackfillStateMachine.ClassifyObjects.ClassifyBatch: no Retry names BackfillIncomplete"]
    # Retrying without backoff, or together with Lambda's own errors, fails too.
    no_backoff = copy.deepcopy(sam)
    definition = no_backoff["Resources"]["BackfillStateMachine"]["Properties"]["Definition"]
    task = definition["States"]["ClassifyObjects"]["ItemProcessor"]["States"]["ClassifyBatch"]
    task["Retry"][0]["BackoffRate"] = 1
    task["Retry"][0]["ErrorEquals"].append("Lambda.ServiceException")
    assert len(gates.retry_violations(no_backoff)) == 2
    # cfn-lint alone would not notice: the broken template is valid CloudFormation.
    assert _cfn_lint(_write(tmp_path, broken)).returncode == 0


def test_cfn_lint_fails_on_a_broken_raw_template(sam: dict[str, Any], tmp_path: Path) -> None:
    broken = copy.deepcopy(sam)
    broken["Resources"]["IngestQueue"]["Properties"]["VisibilityTimeout"] = 50000  # > 12 h
    result = _cfn_lint(_write(tmp_path, broken))
    assert result.returncode != 0
    assert "greater than the maximum of 43200" in result.stdout


def test_the_broken_copies_start_from_the_real_template(sam: dict[str, Any]) -> None:
    assert sam == load_sam_template(gates.TEMPLATE)  # fixtures are not mutated
