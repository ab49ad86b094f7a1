"""`aws lambda` against `imgpipe local`, with the real aws CLI: the template's functions are
listed with their configuration and run, by hand, in their Runtime API workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, LocalProcess

pytestmark = pytest.mark.e2e

BUCKET = "imgpipe-local"
TABLE = "imgpipe-predictions"
MODEL = "efficientnet-lite0@1"
EVENTS = ROOT / "tests" / "events"


def _functions(stack: LocalProcess) -> dict[str, dict[str, Any]]:
    listed = stack.aws("lambda", "list-functions")["Functions"]
    return {f["Handler"]: f for f in listed}


def _invoke(stack: LocalProcess, name: str, payload: Path, out: Path,
            *extra: str) -> tuple[dict[str, Any], Any]:
    meta = stack.aws("lambda", "invoke", "--function-name", name, "--payload",
                     f"fileb://{payload}", *extra, str(out))
    text = out.read_text() if out.exists() else ""
    return meta, json.loads(text) if text else None


def test_list_functions_shows_the_templates_functions(local_stack: LocalProcess) -> None:
    functions = _functions(local_stack)
    assert set(functions) == {"handlers.ingest.handler", "handlers.backfill.handler",
                              "handlers.summary.handler", "handlers.api.handler"}
    ingest = functions["handlers.ingest.handler"]
    assert (ingest["MemorySize"], ingest["Timeout"]) == (2048, 120)
    assert ingest["Environment"]["Variables"]["IMGPIPE_TABLE"] == TABLE


def test_invoke_ingest_with_the_ready_event_file(local_stack: LocalProcess,
                                                 tmp_path: Path) -> None:
    """README's example: upload coffee.jpg, invoke the ingest function with
    tests/events/sqs_local_coffee.json; then a malformed event fails as Lambda reports it."""
    local_stack.aws("s3", "cp", str(ROOT / "samples" / "coffee.jpg"),
                    f"s3://{BUCKET}/incoming/coffee.jpg")
    name = _functions(local_stack)["handlers.ingest.handler"]["FunctionName"]
    meta, answer = _invoke(local_stack, name, EVENTS / "sqs_local_coffee.json",
                           tmp_path / "out.json")
    assert meta == {"StatusCode": 200}
    assert answer == {"batchItemFailures": []}
    item = local_stack.wait_for_item(TABLE, f"s3://{BUCKET}/incoming/coffee.jpg", MODEL)
    assert item["label"]["S"] == "espresso"

    bad = tmp_path / "bad.json"
    bad.write_text('{"Records": "not a list"}')
    meta, error = _invoke(local_stack, name, bad, tmp_path / "error.json")
    assert meta == {"StatusCode": 200, "FunctionError": "Unhandled"}
    assert error["errorType"] and error["errorMessage"] and error["stackTrace"]


def test_invoke_backfill_synchronously_and_as_an_event(local_stack: LocalProcess,
                                                       tmp_path: Path) -> None:
    """Objects outside the input prefix are classified only by these invocations."""
    for name in ("coffee.jpg", "chelsea.jpg"):
        local_stack.aws("s3", "cp", str(ROOT / "samples" / name), f"s3://{BUCKET}/old/{name}")
    name = _functions(local_stack)["handlers.backfill.handler"]["FunctionName"]
    meta, answer = _invoke(local_stack, name, EVENTS / "backfill_batch_local.json",
                           tmp_path / "out.json")
    assert meta == {"StatusCode": 200}
    assert answer["counts"]["classified"] == 2 and answer["counts"]["ignored"] == 1
    assert answer["model"] == MODEL
    item = local_stack.wait_for_item(TABLE, f"s3://{BUCKET}/old/chelsea.jpg", MODEL)
    assert item["status"]["S"] == "classified"

    local_stack.aws("s3", "cp", str(ROOT / "samples" / "rocket.jpg"),
                    f"s3://{BUCKET}/later/rocket.jpg")
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"Items": [{"Key": "later/rocket.jpg"}],
                                 "BatchInput": {"bucket": BUCKET}}))
    meta, answer = _invoke(local_stack, name, event, tmp_path / "async.json",
                           "--invocation-type", "Event")
    assert meta == {"StatusCode": 202} and answer is None
    item = local_stack.wait_for_item(TABLE, f"s3://{BUCKET}/later/rocket.jpg", MODEL)
    assert item["status"]["S"] == "classified"
