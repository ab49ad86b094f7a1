"""What a new user runs into first, on the local stack: a bucket that does not exist, a
prefix with nothing in it, a second run that has nothing left to do, and a stack terminal
that stays readable meanwhile."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import BIN, ROOT, LocalProcess

pytestmark = pytest.mark.e2e

BUCKET = "imgpipe-local"
LONGEST_STACK_LINE = 300


def _backfill(stack: LocalProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "imgpipe"), "backfill", *args], env=stack.env,
                          capture_output=True, text=True, timeout=300)


def test_a_missing_bucket_is_named_and_the_stack_terminal_stays_readable(
    local_stack: LocalProcess,
) -> None:
    done = _backfill(local_stack, "s3://no-such-bucket/old/")
    assert done.returncode == 1
    assert "bucket 'no-such-bucket' does not exist" in done.stderr
    assert "GoneError" not in done.stderr

    # The same execution started past the command's check (as the aws CLI would): it fails
    # in the state machine, which says so in describe-execution, and the emulator's engine
    # logs it in a line a person can read, not 3,500 characters of its parse tree.
    before = len(local_stack.output)
    machines = local_stack.aws("stepfunctions", "list-state-machines")["stateMachines"]
    arn = next(m["stateMachineArn"] for m in machines if m["name"] == "imgpipe-backfill")
    started = local_stack.aws("stepfunctions", "start-execution", "--state-machine-arn", arn,
                              "--input", json.dumps({"bucket": "no-such-bucket",
                                                     "prefix": "old/"}))
    followed = _backfill(local_stack, "--follow", started["executionArn"])
    assert followed.returncode == 1
    assert "the bucket does not exist (NoSuchBucket)" in followed.stderr
    assert "the object no longer exists" not in followed.stderr
    new_lines = local_stack.output[before:]
    assert new_lines, "the engine's failure is still mentioned"
    assert max(len(line) for line in new_lines) <= LONGEST_STACK_LINE, new_lines


def test_an_empty_prefix_and_a_rerun_say_what_happened(local_stack: LocalProcess) -> None:
    empty = _backfill(local_stack, f"s3://{BUCKET}/nothing-here/")
    assert empty.returncode == 0, empty.stderr
    assert ("backfill of s3://imgpipe-local/nothing-here/ with efficientnet-lite0@1: no "
            "objects found there") in empty.stdout
    assert "?" not in empty.stdout

    for name in ("coffee.jpg", "chelsea.jpg"):
        local_stack.aws("s3", "cp", str(ROOT / "samples" / name),
                        f"s3://{BUCKET}/first-steps/{name}")
    first = _backfill(local_stack, f"s3://{BUCKET}/first-steps/")
    assert first.returncode == 0, first.stderr
    assert "images/s (skips not counted)" in first.stdout
    again = _backfill(local_stack, f"s3://{BUCKET}/first-steps/")
    assert again.returncode == 0, again.stderr
    assert "images/s" not in again.stdout
    assert "every object already had a record for efficientnet-lite0@1" in again.stdout
