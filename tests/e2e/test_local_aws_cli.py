"""The export lines the banner prints point every aws CLI command of the README at the stack,
`aws sqs` included (aws CLI v1 sends it to queue.amazonaws.com unless its config loads
imgpipe.local.awscli_endpoints), and the README's dead-letter runbook runs as written."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.e2e.conftest import BIN, ROOT, LocalProcess

pytestmark = pytest.mark.e2e

# The pages the commands live on: the README's deploy steps define `out`, the deploy page
# holds the dead-letter runbook, the local stack's page the `aws lambda invoke` lines.
README = "README.md"
DEPLOY = "docs/deploy.md"
LOCAL = "imgpipe/local/README.md"


def _block_after(page: str, heading: str, first: str) -> str:
    """The first fenced block of `page` after `heading` whose text starts with `first`."""
    text = (ROOT / page).read_text(encoding="utf-8")
    section = text[text.index(heading):]
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", section, flags=re.S | re.M):
        if block.startswith(first):
            return str(block)
    raise AssertionError(f"no block starting {first!r} after {heading!r} in {page}")


def _bash(stack: LocalProcess, script: str) -> subprocess.CompletedProcess[str]:
    """`script` after the banner's export lines, in a shell with nothing else configured.
    A request that would leave this machine goes to a closed local proxy port instead."""
    exports = [line.strip() for line in stack.output if line.strip().startswith("export ")]
    assert any(line.startswith("export AWS_ENDPOINT_URL=") for line in exports), exports
    env = {"PATH": stack.env["PATH"], "HOME": stack.env["HOME"], "AWS_PAGER": "",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "NO_PROXY": "127.0.0.1,localhost", "AWS_MAX_ATTEMPTS": "1",
           **{k: v for k, v in stack.env.items() if k == "PYTHONPATH"}}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join([*exports, script])],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_banner_exports_reach_the_stack_with_aws_sqs(local_stack: LocalProcess) -> None:
    done = _bash(local_stack, "aws sqs list-queues --output text")
    assert done.returncode == 0, done.stderr
    assert f"{local_stack.endpoint}/123456789012/imgpipe-ingest-dlq" in done.stdout
    assert (BIN / "aws").exists()


def test_the_readme_dead_letter_runbook_runs_against_the_stack(
        local_stack: LocalProcess) -> None:
    out = _block_after(README, "### Build and deploy", "out() {").split("\nBUCKET=")[0]
    runbook = _block_after(DEPLOY, "## When messages land in the dead-letter queue", "aws sqs ")
    batches = sum(line.startswith("batch: ") for line in local_stack.output)
    done = _bash(local_stack, "\n".join([
        out,
        "aws sqs send-message --queue-url \"$(out DlqUrl)\" --message-body "
        "'{\"Records\": []}' > /dev/null",
        runbook,
        "aws sqs get-queue-attributes --queue-url \"$(out DlqUrl)\" "
        "--attribute-names ApproximateNumberOfMessages --output text",
    ]))
    assert done.returncode == 0, done.stderr
    assert '"Body": "{\\"Records\\": []}"' in done.stdout  # looked at without taking it
    assert '"TaskHandle"' in done.stdout
    assert '"Status": "COMPLETED"' in done.stdout
    assert '"ApproximateNumberOfMessagesMoved": 1' in done.stdout
    assert done.stdout.rstrip().endswith("ATTRIBUTES\t0")  # the DLQ is empty again
    # ... and the message is back in the ingest queue, whose poller takes it
    local_stack.wait_for_output(lambda: sum(
        line.startswith("batch: ") for line in local_stack.output) > batches)
    assert "Traceback" not in "".join(local_stack.output)


def test_the_readme_invoke_lines_leave_nothing_in_the_repo_and_time_the_event_now(
        local_stack: LocalProcess) -> None:
    """`aws lambda invoke ... out.json` left out.json in the repository, and the fixture's
    fixed eventTime gave the record an event_to_record_ms of days."""
    block = _block_after(LOCAL, "## Run a function by hand", "aws lambda list-functions")
    ingest_part = block.split("\nBACKFILL=")[0]
    before = {p.name for p in ROOT.iterdir()}
    done = _bash(local_stack, ingest_part)
    assert done.returncode == 0, done.stderr
    assert '"StatusCode": 200' in done.stdout
    assert '{"batchItemFailures": []}' in done.stdout
    assert {p.name for p in ROOT.iterdir()} == before
    item = local_stack.wait_for_item("imgpipe-predictions",
                                     "s3://imgpipe-local/incoming/coffee.jpg",
                                     "efficientnet-lite0@1")
    one_hour_ms = 3_600_000  # the fixture's date is days old: any fresh time is far below
    assert int(item["event_to_record_ms"]["N"]) < one_hour_ms, item["event_to_record_ms"]
    fixture = (ROOT / "tests" / "events" / "sqs_local_coffee.json").read_text()
    stamp = re.search(r'sed "s/([^/]+)/', block)
    assert stamp and stamp.group(1) in fixture  # the sed still matches the fixture's time
