"""The local stack patches moto's internals (imgpipe/local: emulator, distributed_map,
s3_events, message_moves, state). Those are private: any moto release may rename them or
change their parameters, and a patch on a missing or reshaped target would fail only when
the stack runs (or, worse, silently do nothing). So moto is pinned exactly in
pyproject.toml, and each target is checked here against that version: it exists, is the
kind of attribute the patch replaces, and takes the parameters the patch passes on.

When moto is upgraded: change the pin, run this file, and read each failing target's
new code before changing its expected parameters here and its patch in imgpipe/local."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SFN_PARSER = "moto.stepfunctions.parser.asl.component.state.exec.state_map"

# (module, owner or "" for a module-level function, attribute, kind, parameters): every
# attribute of moto a patch replaces, or calls from inside a replacement.
TARGETS = [
    # emulator.py
    ("moto.backends", "", "list_of_moto_modules", "function", []),
    ("moto.sqs.models", "SQSBackend", "is_message_valid_based_on_retention_period",
     "function", ["self", "queue_name", "message"]),
    ("moto.s3.responses", "S3Response", "_bucket_response_post", "function",
     ["self", "request", "bucket_name"]),
    ("moto.s3.responses", "S3Response", "_get_cors_headers_other", "function", ["self"]),
    ("moto.s3.responses", "S3Response", "is_delete_keys", "function", ["self"]),
    ("moto.stepfunctions.parser.models", "StepFunctionsParserBackend", "start_execution",
     "function", ["self", "state_machine_arn", "name", "execution_input", "trace_header"]),
    ("moto.awslambda.models", "LambdaBackend", "invoke", "function",
     ["self", "function_name", "qualifier", "body", "headers", "response_headers"]),
    # distributed_map.py
    (f"{SFN_PARSER}.iteration.itemprocessor.distributed_item_processor_worker",
     "DistributedItemProcessorWorker", "_eval_job", "function", ["self", "env", "job"]),
    (f"{SFN_PARSER}.iteration.distributed_iteration_component",
     "DistributedIterationComponent", "_map_run", "function", ["self", "env", "eval_input"]),
    (f"{SFN_PARSER}.result_writer.resource_eval.resource_eval_s3", "ResourceEvalS3",
     "_handle_put_object", "staticmethod",
     ["env", "resource_runtime_part", "state_credentials"]),
    (f"{SFN_PARSER}.result_writer.resource_eval.resource_eval_s3", "ResourceEvalS3",
     "_get_s3_client", "staticmethod", ["resource_runtime_part", "state_credentials"]),
    ("moto.stepfunctions.parser.models", "StepFunctionsParserBackend", "describe_map_run",
     "function", ["self", "map_run_arn"]),
    ("moto.stepfunctions.parser.models", "StepFunctionsParserBackend", "list_map_runs",
     "function", ["self", "execution_arn"]),
    ("moto.stepfunctions.parser.models", "StepFunctionsParserBackend", "update_map_run",
     "function", ["self", "map_run_arn", "max_concurrency", "tolerated_failure_count",
                  "tolerated_failure_percentage"]),
    ("moto.stepfunctions.parser.models", "StepFunctionsParserBackend", "_get_executions",
     "function", None),
    ("moto.stepfunctions.responses", "StepFunctionResponse", "list_executions", "function",
     ["self"]),
    # s3_events.py
    ("moto.events.models", "Rule", "send_to_targets", "function",
     ["self", "original_event", "transform_input"]),
    ("moto.s3.notifications", "", "send_event", "function",
     ["account_id", "event_name", "bucket", "key"]),
    # state.py
    ("moto.s3.notifications", "", "send_test_event", "function", ["account_id", "bucket"]),
    ("moto.sqs.models", "Queue", "add_message", "function", ["self", "message"]),
    ("moto.sqs.models", "Queue", "delete_message", "function", ["self", "receipt_handle"]),
    ("moto.sqs.models", "SQSBackend", "purge_queue", "function", ["self", "queue_name"]),
]


def _pinned_moto() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        local = tomllib.load(f)["project"]["optional-dependencies"]["local"]
    pins = [m.group(1) for d in local if (m := re.fullmatch(r"moto\[[a-z,]+\]==([\d.]+)", d))]
    assert len(pins) == 1, f"moto must be pinned exactly (==) in [local]: {local}"
    return pins[0]


def test_moto_is_pinned_exactly_and_installed_at_that_version() -> None:
    assert version("moto") == _pinned_moto()


@pytest.mark.parametrize(
    ("module", "owner", "name", "kind", "parameters"), TARGETS,
    ids=[f"{owner or module}.{name}" for module, owner, name, *_ in TARGETS])
def test_patched_target_has_the_expected_shape(module: str, owner: str, name: str, kind: str,
                                               parameters: list[str] | None) -> None:
    where = importlib.import_module(module)
    if owner:
        where = getattr(where, owner)
    attribute = inspect.getattr_static(where, name, None)
    assert attribute is not None, f"moto {version('moto')} has no {owner or module}.{name}"
    assert type(attribute).__name__ == kind, (name, type(attribute))
    if parameters is not None:
        assert list(inspect.signature(getattr(where, name)).parameters) == parameters


@pytest.mark.parametrize("name", ["start_message_move_task", "list_message_move_tasks"])
def test_the_message_move_actions_are_added_not_replaced(name: str) -> None:
    """message_moves.py adds these SQS actions; moto has none, so nothing of moto's is
    shadowed (a moto that gains them needs its own answer compared with ours). The
    patch reads the request with `_get_param`."""
    from moto.sqs.responses import SQSResponse

    assert inspect.getattr_static(SQSResponse, name, None) is None
    assert list(inspect.signature(SQSResponse._get_param).parameters)[:2] == [
        "self", "param_name"]


def test_the_multipart_put_event_name_exists() -> None:
    from moto.s3.notifications import S3NotificationEvent

    assert S3NotificationEvent.OBJECT_CREATED_PUT_EVENT == "s3:ObjectCreated:Put"
