"""`imgpipe backfill`: argument errors, the progress line and the summary."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from imgpipe.cli import main
from imgpipe.commands.backfill import Rate, _cause, _print_summary, _progress_line


def test_a_uri_that_is_not_s3_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backfill", "https://example.invalid/photos/"]) == 2
    assert "s3://" in capsys.readouterr().err


def test_progress_line_shows_done_total_rate_and_eta() -> None:
    counts = {"total": 200, "succeeded": 45, "failed": 5, "running": 10, "pending": 140}
    rate = Rate()
    rate.update(time.monotonic() - 10.0, 10)  # the first 10 finished 10 s ago
    line = _progress_line(counts, elapsed=30.0, status="RUNNING", unit="objects",
                          known_total=200, rate=rate)
    assert "50/200 objects" in line
    # the unit is said (issue 20: locally a bare "1.3/s" was batches per second)
    per_s = float(re.search(r"([0-9.]+) objects/s", line).group(1))  # type: ignore[union-attr]
    assert 3.9 < per_s <= 4.0  # 40 more in 10 s: the start-up before the first is not counted
    eta = float(re.search(r"ETA +([0-9]+) s", line).group(1))  # type: ignore[union-attr]
    assert 37 <= eta <= 38  # 150 left at 4/s
    assert "5 failed" in line
    assert line.count("#") == 7  # 50 of 200 of a 30-wide bar


def test_a_total_still_growing_gets_no_bar_and_no_eta() -> None:
    """The map run's total grows as the reader lists (AWS) or children start (emulator):
    the old bar ran against it and its first ETA was 86 s for an 18 s run."""
    counts = {"total": 64, "succeeded": 30, "running": 34}
    rate = Rate()
    rate.update(time.monotonic() - 5.0, 5)
    line = _progress_line(counts, elapsed=6.0, status="RUNNING", unit="objects",
                          known_total=None, rate=rate)
    assert "30 objects done (counting the rest)" in line
    assert "/64" not in line and "ETA" not in line and "#" not in line
    assert "/s" in line  # the pace is known, only the end is not


def test_no_rate_or_eta_until_a_few_units_are_done() -> None:
    counts = {"total": 100, "succeeded": 1, "running": 9}
    line = _progress_line(counts, elapsed=9.0, status="RUNNING", known_total=100, rate=Rate())
    assert "1/100 objects" in line
    assert "/s" not in line and "ETA" not in line
    rate = Rate()
    now = time.monotonic()
    assert rate.update(now, 1) == (None, None)  # the first finished unit only starts the clock
    assert rate.update(now + 1.0, 10) == (None, None)  # under 2 s since
    assert rate.update(now + 3.0, 10)[0] == pytest.approx(3.0)


def test_the_known_total_wins_over_the_growing_one() -> None:
    counts = {"total": 70, "succeeded": 70}
    line = _progress_line(counts, elapsed=9.0, status="RUNNING", known_total=300, rate=Rate())
    assert "70/300 objects" in line


def test_progress_before_the_map_run_exists() -> None:
    assert "listing" in _progress_line(None, elapsed=2.0, status="RUNNING")


def test_summary_names_every_count(capsys: pytest.CaptureFixture[str]) -> None:
    _print_summary({"request": {"bucket": "b", "prefix": "old/"}, "models": ["m@1"],
                    "images": 10, "counts": {"classified": 7, "skipped": 2, "rejected": 1}},
                   elapsed=2.0)
    out = capsys.readouterr().out
    assert "backfill of s3://b/old/ with m@1" in out
    for word, number in (("classified", "7"), ("skipped", "2"), ("rejected", "1"),
                         ("gone", "0"), ("failed", "0")):
        line = next(x for x in out.splitlines() if x.strip().startswith(word))
        assert line.split()[-1] == number
    assert "images/s (skips not counted)" in out.splitlines()[-1]
    assert out.splitlines()[-1].split()[-1] == "4.0"  # 8 images worked on in 2 s, 2 skipped


def test_a_run_that_skipped_everything_reports_skips_not_a_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_summary({"request": {"bucket": "b", "prefix": "old/"}, "models": ["m@1"],
                    "images": 40, "counts": {"skipped": 40}}, elapsed=3.0)
    out = capsys.readouterr().out
    assert "images/s" not in out
    assert "every object already had a record for m@1: nothing was classified" in out
    assert next(x for x in out.splitlines() if "skipped" in x).split()[-1] == "40"


def test_an_empty_prefix_says_nothing_was_found_and_names_the_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_summary({"request": {"bucket": "b", "prefix": "nothing-here/"}, "models": [],
                    "images": 0, "counts": dict.fromkeys(("classified", "skipped"), 0)},
                   elapsed=1.0, model="efficientnet-lite0@1")
    out = capsys.readouterr().out
    assert out.strip() == (
        "backfill of s3://b/nothing-here/ with efficientnet-lite0@1: no objects found "
        "there, nothing to classify (check the prefix: `aws s3 ls s3://b/nothing-here/`)")
    assert "?" not in out


def test_failed_batches_are_named_not_called_an_empty_prefix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 18: every batch failing on a model that does not exist printed "no objects
    found there"."""
    counts = dict.fromkeys(("classified", "skipped", "rejected", "gone", "superseded",
                            "ignored"), 0) | {"failed": 4}
    _print_summary({"request": {"bucket": "b", "prefix": "old/"}, "models": [], "images": 4,
                    "counts": counts, "failed_batches": 1, "failures": [{
                        "status": "FAILED", "error": "ModelError", "objects": 4,
                        "cause": "ModelError: no model named 'nope'", "first_key": "old/a.jpg"}]},
                   elapsed=1.0, model="nope")
    out = capsys.readouterr().out
    assert "no objects found" not in out
    assert "old/a.jpg (+3 more): ModelError: no model named 'nope'" in out
    assert re.search(r"failed \(transient; re-run to retry\) +4", out)


def test_a_failed_execution_says_the_lambda_error_in_one_sentence() -> None:
    cause = ('{"errorType":"GoneError","errorMessage":"listing s3://x/old/: the bucket '
             'does not exist (NoSuchBucket)"}')
    assert _cause({"status": "FAILED", "cause": cause}) == (
        "GoneError: listing s3://x/old/: the bucket does not exist (NoSuchBucket)")
    assert _cause({"status": "FAILED", "cause": "States.Timeout"}) == "States.Timeout"


class FakeSfn:
    """The Step Functions calls `imgpipe backfill` makes, answered from memory."""

    ARN = "arn:aws:states:us-east-1:123456789012:execution:imgpipe-backfill:run-1"

    def __init__(self, statuses: list[str], output: dict[str, Any] | None = None,
                 interrupt_after: int | None = None, definition: str = "") -> None:
        self.statuses = statuses
        self.definition = definition
        self.output = output or {}
        self.interrupt_after = interrupt_after
        self.described = 0
        self.started: list[dict[str, Any]] = []

    def get_paginator(self, name: str) -> Any:
        assert name == "list_state_machines"
        machine = {"name": "imgpipe-backfill", "stateMachineArn": "arn:sm"}
        return type("P", (), {"paginate": lambda self: [{"stateMachines": [machine]}]})()

    def start_execution(self, **kwargs: Any) -> dict[str, Any]:
        self.started.append(kwargs)
        return {"executionArn": self.ARN}

    def describe_execution(self, executionArn: str) -> dict[str, Any]:  # noqa: N803
        assert executionArn == self.ARN
        self.described += 1
        if self.interrupt_after is not None and self.described > self.interrupt_after:
            raise KeyboardInterrupt
        status = self.statuses[min(self.described - 1, len(self.statuses) - 1)]
        return {"status": status, "output": json.dumps(self.output),
                "input": json.dumps({"bucket": "photos", "prefix": "old/"})}

    def list_map_runs(self, executionArn: str) -> dict[str, Any]:  # noqa: N803
        return {"mapRuns": []}

    def describe_state_machine_for_execution(self, executionArn: str  # noqa: N803
                                             ) -> dict[str, Any]:
        assert executionArn == self.ARN
        if not self.definition:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                              "DescribeStateMachineForExecution")
        return {"stateMachineArn": "arn:sm", "definition": self.definition}


class FakeS3:
    def __init__(self, missing: bool = False) -> None:
        self.missing = missing

    def head_bucket(self, Bucket: str) -> None:  # noqa: N803
        if self.missing:
            raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadBucket")

    def get_paginator(self, name: str) -> Any:
        pages = [{"KeyCount": 2, "Contents": [{"Key": "old/a"}, {"Key": "old/b"}]}]
        return type("P", (), {"paginate": lambda self, **kw: pages})()


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[FakeSfn, FakeS3]]:
    def install(sfn: FakeSfn, s3: FakeS3) -> tuple[FakeSfn, FakeS3]:
        import pipeline.aws

        clients = {"stepfunctions": sfn, "s3": s3}
        monkeypatch.setattr(pipeline.aws, "client_for", lambda service, settings: clients[service])
        monkeypatch.setattr(time, "sleep", lambda s: None)
        return sfn, s3

    return install


def test_a_missing_bucket_is_said_and_nothing_starts(
    fake_aws: Callable[..., tuple[FakeSfn, FakeS3]], capsys: pytest.CaptureFixture[str],
) -> None:
    sfn, _ = fake_aws(FakeSfn(["SUCCEEDED"]), FakeS3(missing=True))
    assert main(["backfill", "s3://no-such-bucket/old/"]) == 1
    err = capsys.readouterr().err
    assert "bucket 'no-such-bucket' does not exist" in err
    assert "GoneError" not in err and "no longer exists" not in err
    assert sfn.started == []


def test_ctrl_c_says_the_execution_goes_on_and_how_to_follow_it(
    fake_aws: Callable[..., tuple[FakeSfn, FakeS3]], capsys: pytest.CaptureFixture[str],
) -> None:
    sfn, _ = fake_aws(FakeSfn(["RUNNING"], interrupt_after=1), FakeS3())
    assert main(["backfill", "s3://photos/old/"]) == 130
    err = capsys.readouterr().err
    assert "the execution goes on in AWS" in err
    assert f"imgpipe backfill --follow {FakeSfn.ARN}" in err
    assert f"aws stepfunctions stop-execution --execution-arn {FakeSfn.ARN}" in err
    assert "interrupted" not in err


AWS_DEFINITION = json.dumps({"StartAt": "Map", "States": {"Map": {
    "Type": "Map", "ItemReader": {"Resource": "arn:aws:states:::s3:listObjectsV2"},
    "End": True}}})
LOCAL_DEFINITION = json.dumps({"StartAt": "Plan", "States": {
    "Plan": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
             "Parameters": {"FunctionName": "imgpipe-local-planner"}, "Next": "Map"},
    "Map": {"Type": "Map", "End": True, "ItemReader": {
        "Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSON"}},
        "ItemProcessor": {"StartAt": "Batch", "States": {"Batch": {
            "Type": "Task", "End": True}}}}}})


@pytest.mark.parametrize(("definition", "where"), [
    (AWS_DEFINITION, "in AWS"),
    (LOCAL_DEFINITION, "in the local stack"),
    ("", "in AWS"),  # the state machine may not be described: AWS's unit
])
def test_the_unit_comes_from_the_state_machine_not_from_the_endpoint(
    fake_aws: Callable[..., tuple[FakeSfn, FakeS3]], capsys: pytest.CaptureFixture[str],
    definition: str, where: str,
) -> None:
    """A loopback endpoint (a tunnel, a proxy) says nothing about what the Map counts; the
    state machine the execution runs does: the local stack's lists through its planner."""
    fake_aws(FakeSfn(["RUNNING"], interrupt_after=1, definition=definition), FakeS3())
    assert main(["backfill", "s3://photos/old/", "--endpoint-url",
                 "http://127.0.0.1:4566"]) == 130
    assert f"the execution goes on {where}" in capsys.readouterr().err


def test_follow_picks_up_a_running_execution_to_its_summary(
    fake_aws: Callable[..., tuple[FakeSfn, FakeS3]], capsys: pytest.CaptureFixture[str],
) -> None:
    output = {"request": {"bucket": "photos", "prefix": "old/"}, "models": ["m@1"],
              "images": 2, "counts": {"classified": 2}}
    sfn, _ = fake_aws(FakeSfn(["RUNNING", "RUNNING", "SUCCEEDED"], output), FakeS3())
    assert main(["backfill", "--follow", FakeSfn.ARN]) == 0
    out = capsys.readouterr().out
    assert "backfill of s3://photos/old/ with m@1:" in out
    assert sfn.started == [] and sfn.described == 3


def test_follow_and_a_uri_together_or_neither_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["backfill"]) == 2
    assert main(["backfill", "s3://b/p/", "--follow", FakeSfn.ARN]) == 2
    assert "--follow ARN" in capsys.readouterr().err


def test_the_emulators_engine_log_is_one_short_line() -> None:
    import logging

    from imgpipe.local.emulator import ENGINE_LINE_LIMIT, EngineLogFormatter

    tree = "(PayloadBindingStringExpressionSimple| {'field': 'bucket'}) " * 60
    message = ("Exception=FailureEventException, Error=GoneError, Details={\"taskFailedEvent"
               f"Details\": {{}}}} at '(StateTaskServiceLambda| {tree}'")
    assert len(message) > 3000
    record = logging.LogRecord("moto.stepfunctions.parser", logging.ERROR, __file__, 1,
                               message, None, None)
    line = EngineLogFormatter().format(record)
    assert "\n" not in line and len(line) <= ENGINE_LINE_LIMIT + 40
    assert "GoneError" in line and "describe-execution" in line
    other = logging.LogRecord("moto.stepfunctions", logging.WARNING, __file__, 1,
                              "x" * 5000, None, None)
    assert len(EngineLogFormatter().format(other)) <= ENGINE_LINE_LIMIT + 40


def test_the_total_comes_from_the_plan_locally_and_from_a_listing_on_aws() -> None:
    from imgpipe.commands.backfill import TotalCounter

    class History:
        def get_execution_history(self, **kwargs: Any) -> dict[str, Any]:
            return {"events": [
                {"type": "PassStateExited",
                 "stateExitedEventDetails": {"output": json.dumps({"request": {}})}},
                {"type": "TaskStateExited", "stateExitedEventDetails": {"output": json.dumps(
                    {"request": {}, "plan": {"Bucket": "b", "Key": "k", "batches": 9,
                                             "objects": 530}})}}]}

    assert TotalCounter(History(), FakeSfn.ARN, "batches", None, "b", "p/").get() == 9

    class Pages:
        def get_paginator(self, name: str) -> Any:
            pages = [{"KeyCount": 1000}, {"KeyCount": 1000}, {"KeyCount": 17}]
            return type("P", (), {"paginate": lambda self, **kw: iter(pages)})()

    counter = TotalCounter(FakeSfn(["RUNNING"]), FakeSfn.ARN, "objects", Pages(), "b", "p/")
    assert counter._thread is not None
    counter._thread.join(timeout=10)
    assert counter.get() == 2017


@pytest.mark.parametrize(("code", "exit_code", "says"), [
    ("ExecutionDoesNotExist", 1, "no execution arn:aws:states:us-east-1:123456789012:"
                                 "execution:imgpipe-backfill:gone"),
    ("InvalidArn", 2, "--follow takes an execution ARN"),
])
def test_follow_of_an_execution_that_cannot_be_found_is_one_line(
    fake_aws: Callable[..., tuple[FakeSfn, FakeS3]], capsys: pytest.CaptureFixture[str],
    code: str, exit_code: int, says: str,
) -> None:
    # The errors DescribeExecution documents for an unknown and a malformed ARN.
    class Unknown(FakeSfn):
        def describe_execution(self, executionArn: str) -> dict[str, Any]:  # noqa: N803
            raise ClientError({"Error": {"Code": code, "Message": f"x: {executionArn}"}},
                              "DescribeExecution")

    fake_aws(Unknown(["RUNNING"]), FakeS3())
    arn = "arn:aws:states:us-east-1:123456789012:execution:imgpipe-backfill:gone"
    assert main(["backfill", "--follow", arn]) == exit_code
    err = capsys.readouterr().err
    assert err.startswith(f"imgpipe backfill: {says}") and len(err.strip().splitlines()) == 1
