"""The emulator's Distributed Map, made to behave as AWS documents it where moto 5.2 does not.

Installed in the emulator process (`imgpipe.local.emulator`), patching moto's Step
Functions interpreter:

- **Child outcomes.** moto counts a failed child and goes on; a child that timed out is
  even counted as succeeded. Here each child execution is recorded as AWS's ResultWriter
  records it (status, input, output or error and cause, dates), in the map run's counts too.
- **EXPRESS children stop at 5 minutes.** The emulator's interpreter only runs STANDARD
  children, so `provision.emulator_definition` marks an ItemProcessor that was EXPRESS
  (`EXPRESS_MARKER` in its Comment) and its children are stopped at `express_limit_s()`
  (300 s, AWS's quota; `IMGPIPE_LOCAL_EXPRESS_LIMIT_S` lowers it for tests only), Retry
  attempts and delays included. A child stopped so is TIMED_OUT, a failure; its Lambda
  invocation runs on, as on AWS.
- **Tolerated failures.** moto ignores them, so a run with failed children succeeded.
  Here the Map fails with `States.ExceedToleratedFailureThreshold` once more items failed
  than its ToleratedFailurePercentage (or ToleratedFailureCount) allows; children not
  started by then are PENDING, as on AWS.
- **ResultWriter.** moto writes an empty manifest and no result files. Here it writes
  AWS's documented files: `<Prefix><map run id>/manifest.json` and `SUCCEEDED_n.json`,
  `FAILED_n.json`, `PENDING_n.json` (JSON arrays of child executions with their metadata,
  Transformation NONE), a new file each `result_file_bytes()` (AWS: 5 GB).
- **Map runs of an execution that is starting.** moto appends an execution to its list
  before its worker thread has built the environment that holds the map runs (the
  worker is None, then its `env` is None until the thread runs): `list_map_runs` (and
  `describe_map_run`, `update_map_run`, which walk every execution) raised
  AttributeError on it, printing a traceback in the
  stack's terminal about one backfill in four, when `imgpipe backfill` asked at the wrong
  moment. An execution without a worker has no map runs yet.
- **`list-executions --map-run-arn`** lists the map run's child executions, from the
  records above (moto answered 500: it only knows state machine ARNs).
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EXPRESS_MARKER", "MapRunResults", "express_limit_s", "install",
           "result_file_bytes"]

# Put in the Comment of an ItemProcessor whose children were EXPRESS before the emulator's
# definition turned them into STANDARD (which its interpreter requires).
EXPRESS_MARKER = "imgpipe local: EXPRESS children, stopped at 5 minutes"
EXPRESS_LIMIT_S = 300  # AWS's quota for an EXPRESS execution
RESULT_FILE_BYTES = 5 * 1000 ** 3  # AWS starts a new result file past 5 GB
_ATTRIBUTE = "_imgpipe_results"


def express_limit_s() -> float:
    """How long an EXPRESS child may run: AWS's 300 s, unless a test lowers it."""
    return float(os.environ.get("IMGPIPE_LOCAL_EXPRESS_LIMIT_S") or EXPRESS_LIMIT_S)


def result_file_bytes() -> int:
    return int(os.environ.get("IMGPIPE_LOCAL_RESULT_FILE_BYTES") or RESULT_FILE_BYTES)


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class MapRunResults:
    """What one map run's children did, in the ResultWriter's terms."""

    total_items: int = 0
    failed_items: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threshold_exceeded: bool = False

    def add(self, entry: dict[str, Any], items: int) -> None:
        with self.lock:
            self.entries.append(entry)
            if entry["Status"] not in ("SUCCEEDED", "PENDING"):
                self.failed_items += items

    def by_status(self, status: str) -> list[dict[str, Any]]:
        wanted = {"SUCCEEDED": ("SUCCEEDED",), "FAILED": ("FAILED", "TIMED_OUT", "ABORTED"),
                  "PENDING": ("PENDING",)}[status]
        return [e for e in self.entries if e["Status"] in wanted]


def _items_of(job_input: Any) -> int:
    """Items a child carries: a batch's Items (ItemBatcher), else one."""
    if isinstance(job_input, dict) and isinstance(job_input.get("Items"), list):
        return max(1, len(job_input["Items"]))
    return 1


def exceeds_tolerance(failed: int, total: int, percentage: Any, count: Any) -> bool:
    """AWS fails a map run once its failed items pass the tolerated percentage (or count,
    when one is set); without either, one failure is too many."""
    if failed <= 0:
        return False
    pct = float(percentage or 0)
    allowed = int(count or 0)
    if pct <= 0 and allowed <= 0:
        return True
    if allowed > 0 and failed > allowed:
        return True
    return pct > 0 and total > 0 and failed * 100.0 / total > pct


def install(patch: Callable[[Any, str, Any], None] = setattr) -> None:
    """Patch moto's classes (`patch` is setattr; tests pass monkeypatch.setattr)."""
    import logging

    # The parser says, for every definition, that it ignores tolerated failures; here
    # they are applied.
    logging.getLogger("moto.stepfunctions.parser.asl.parse.preprocessor").addFilter(
        lambda record: "currently have no effect" not in record.getMessage())
    _patch_children(patch)
    _patch_map_run(patch)
    _patch_result_writer(patch)
    _patch_map_run_lookups(patch)
    _patch_list_executions(patch)


# ---------------------------------------------------------------- children


def _patch_children(patch: Callable[[Any, str, Any], None]) -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor.distributed_item_processor_worker import (  # noqa: E501
        DistributedItemProcessorWorker,
    )

    def eval_job(worker: Any, env: Any, job: Any) -> None:
        """One child execution: run it (unless the run has already failed) and record it
        as AWS lists it (ListExecutions of the map run, the counters, the tolerance)."""
        record = worker._map_run_record
        results: MapRunResults = getattr(record, _ATTRIBUTE, None) or MapRunResults()
        setattr(record, _ATTRIBUTE, results)
        items = _items_of(job.job_input)
        name = str(uuid.uuid4())
        started = _now()
        entry: dict[str, Any] = {
            "ExecutionArn": _child_execution_arn(record.map_state_machine_arn, name),
            "Input": json.dumps(job.job_input, separators=(",", ":")),
            "InputDetails": {"Included": True},
            "Name": name,
        }
        record.item_counter.total.count()
        record.execution_counter.total.count()
        if results.threshold_exceeded:  # the run has failed: AWS starts no more children
            entry.update(Status="PENDING", StartDate=_iso(started))
            record.item_counter.pending.count()
            record.execution_counter.pending.count()
            results.add(entry, items)
            job.job_output = None
            return
        status, output, error, cause = _run_child(worker, env, job)
        _count_child(record, status)
        _finish_entry(entry, record, started, status, output, error, cause)
        results.add(entry, items)
        if status != "SUCCEEDED":
            with results.lock:
                if exceeds_tolerance(results.failed_items, results.total_items,
                                     record.tolerated_failure_percentage,
                                     record.tolerated_failure_count):
                    results.threshold_exceeded = True
        job.job_output = output

    patch(DistributedItemProcessorWorker, "_eval_job", eval_job)


def _run_child(worker: Any, env: Any, job: Any) -> tuple[str, Any, str, str]:
    """Run one child's program; (status, output, error, cause) as AWS reports them. An
    EXPRESS child is stopped at the EXPRESS limit (`express_limit_s`)."""
    from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import (
        TimeoutSeconds,
    )
    from moto.stepfunctions.parser.asl.eval.program_state import (
        ProgramError,
        ProgramStopped,
        ProgramTimedOut,
    )
    from moto.stepfunctions.parser.asl.eval.states import ItemData, MapData

    record, program = worker._map_run_record, job.job_program
    express = EXPRESS_MARKER in str(getattr(program.comment, "comment", "") or "")
    record.item_counter.running.count()
    record.execution_counter.running.count()
    status, output, error, cause = "FAILED", None, "States.Runtime", ""
    try:
        env.states.context_object.context_object_data["Map"] = MapData(
            Item=ItemData(Index=job.job_index, Value=job.job_input))
        env.states.reset(job.job_input)
        env.stack.append(env.states.get_input())
        worker._eval_input(env_frame=env)
        if express:
            limit = express_limit_s()
            program.timeout_seconds = TimeoutSeconds(
                timeout_seconds=max(1, int(limit)), is_default=False)
        program.eval(env)
        state = env.program_state()
        if isinstance(state, ProgramTimedOut):
            status, error = "TIMED_OUT", "States.Timeout"
            cause = (f"the child execution ran longer than the {express_limit_s():.0f} s "
                     "an EXPRESS execution may run (its Retry attempts and delays "
                     "included); AWS stops it there")
        elif isinstance(state, ProgramError):
            details = state.error or {}
            error = str(details.get("error") or "States.TaskFailed")
            cause = str(details.get("cause") or "")
        elif isinstance(state, ProgramStopped):
            status, error, cause = "ABORTED", "States.Aborted", "the run was stopped"
        else:
            status, output = "SUCCEEDED", env.states.get_input()
    except Exception as e:  # noqa: BLE001 - recorded as the child's failure
        error, cause = "States.Runtime", f"{type(e).__name__}: {e}"
    finally:
        record.item_counter.running.offset(-1)
        record.execution_counter.running.offset(-1)
    return status, output, error, cause


def _count_child(record: Any, status: str) -> None:
    """The map run's item and execution counters for one finished child."""
    counter = {"SUCCEEDED": "succeeded", "FAILED": "failed", "TIMED_OUT": "timed_out",
               "ABORTED": "aborted"}[status]
    for counts in (record.item_counter, record.execution_counter):
        getattr(counts, counter).count()
        if status == "SUCCEEDED":
            counts.results_written.count()


def _finish_entry(entry: dict[str, Any], record: Any, started: datetime.datetime, status: str,
                  output: Any, error: str, cause: str) -> None:
    """A finished child's ListExecutions entry: output or error, redrive fields, dates."""
    if status == "SUCCEEDED":
        entry["Output"] = json.dumps(output, separators=(",", ":"))
        entry["OutputDetails"] = {"Included": True}
    else:
        entry["Error"], entry["Cause"] = error, cause
    entry.update(
        RedriveCount=0,
        RedriveStatus="NOT_REDRIVABLE" if status == "SUCCEEDED" else "REDRIVABLE",
        StartDate=_iso(started), StateMachineArn=record.map_state_machine_arn,
        Status=status, StopDate=_iso(_now()))
    if status == "SUCCEEDED":
        entry["RedriveStatusReason"] = "Execution is SUCCEEDED and cannot be redriven"


def _child_execution_arn(map_state_machine_arn: str, name: str) -> str:
    """arn:...:stateMachine:NAME/LABEL -> arn:...:execution:NAME/LABEL:CHILD."""
    head, _, tail = map_state_machine_arn.partition(":stateMachine:")
    return f"{head}:execution:{tail}:{name}"


# ---------------------------------------------------------------- the map run


def _patch_map_run(patch: Callable[[Any, str, Any], None]) -> None:
    from moto.stepfunctions.parser.api import ExecutionFailedEventDetails, HistoryEventType
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
        FailureEventException,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (  # noqa: E501
        StatesErrorNameType,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.distributed_iteration_component import (  # noqa: E501
        DistributedIterationComponent,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

    original = DistributedIterationComponent._map_run

    def map_run(component: Any, env: Any, eval_input: Any) -> None:
        record = eval_input.map_run_record
        inputs = env.stack[-1] if env.stack and isinstance(env.stack[-1], list) else []
        results = MapRunResults(total_items=sum(_items_of(i) for i in inputs))
        setattr(record, _ATTRIBUTE, results)
        original(component, env, eval_input)
        if not results.threshold_exceeded:
            return
        failed = results.by_status("FAILED")
        first = "; ".join(_said(str(e.get("Error") or ""), _short_cause(e.get("Cause")))
                          for e in failed[:3])
        cause = (f"{results.failed_items} of {results.total_items} items failed, more than "
                 f"the tolerated {float(record.tolerated_failure_percentage or 0):g} %"
                 f" ({len(failed)} child execution(s) failed"
                 + (f", {len(results.by_status('PENDING'))} not started" if
                    results.by_status("PENDING") else "") + f"). First: {first}")
        error = StatesErrorNameType.StatesExceedToleratedFailureThreshold
        raise FailureEventException(failure_event=FailureEvent(
            env=env, error_name=StatesErrorName(typ=error),
            event_type=HistoryEventType.ExecutionFailed,
            event_details=EventDetails(  # type: ignore[typeddict-item]
                executionFailedEventDetails=ExecutionFailedEventDetails(
                    error=error.to_name(), cause=cause))))

    patch(DistributedIterationComponent, "_map_run", map_run)


def _said(error: str, cause: str) -> str:
    return cause if cause.startswith(error) else f"{error}: {cause}"


def _short_cause(cause: Any) -> str:
    text = str(cause or "")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("errorMessage"):
        kind, message = str(parsed.get("errorType") or "Error"), str(parsed["errorMessage"])
        text = message if message.startswith(kind) else f"{kind}: {message}"
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------- the ResultWriter


def _patch_result_writer(patch: Callable[[Any, str, Any], None]) -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.resource_eval.resource_eval_s3 import (  # noqa: E501
        ResourceEvalS3,
    )

    def put_object(env: Any, resource_runtime_part: Any, state_credentials: Any) -> None:
        parameters = env.stack.pop()
        env.stack.pop()  # the children's outputs: the records below have more
        s3 = ResourceEvalS3._get_s3_client(resource_runtime_part=resource_runtime_part,
                                           state_credentials=state_credentials)
        record = env.map_run_record_pool_manager.get_all().pop()
        results: MapRunResults = getattr(record, _ATTRIBUTE, None) or MapRunResults()
        details = write_results(s3, parameters["Bucket"], parameters.get("Prefix") or "",
                                record.map_run_arn, results)
        env.stack.append({"MapRunArn": record.map_run_arn, "ResultWriterDetails": details})

    patch(ResourceEvalS3, "_handle_put_object", staticmethod(put_object))


def write_results(s3: Any, bucket: str, prefix: str, map_run_arn: str,
                  results: MapRunResults, max_file_bytes: int | None = None) -> dict[str, str]:
    """Write a map run's results as AWS's ResultWriter does; returns
    `{"Bucket", "Key"}` of the manifest."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    folder = f"{prefix}{map_run_arn.rsplit(':', 1)[-1]}/"
    limit = max_file_bytes or result_file_bytes()
    files: dict[str, list[dict[str, Any]]] = {}
    for status in ("FAILED", "PENDING", "SUCCEEDED"):
        files[status] = []
        parts: list[bytes] = []
        size = 0

        def flush(status: str = status) -> None:
            nonlocal parts, size
            body = b"[" + b",".join(parts) + b"]"
            key = f"{folder}{status}_{len(files[status])}.json"
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
            files[status].append({"Key": key, "Size": len(body)})
            parts, size = [], 0

        for entry in results.by_status(status):
            encoded = json.dumps(entry, separators=(",", ":")).encode()
            if parts and size + len(encoded) + 2 > limit:
                flush()
            parts.append(encoded)
            size += len(encoded) + 1
        if parts:
            flush()
    manifest = {"DestinationBucket": bucket, "MapRunArn": map_run_arn, "ResultFiles": files}
    key = f"{folder}manifest.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest, indent=2).encode(),
                  ContentType="application/json")
    return {"Bucket": bucket, "Key": key}


# ---------------------------------------------------------------- the API


def _env_of(execution: Any) -> Any:
    """The execution's environment (which holds its map runs), or None while starting."""
    worker = getattr(execution, "exec_worker", None)
    return getattr(worker, "env", None) if worker is not None else None


def _patch_map_run_lookups(patch: Callable[[Any, str, Any], None]) -> None:
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    def with_worker(backend: Any) -> list[Any]:
        return [e for e in backend._get_executions() if _env_of(e) is not None]

    def describe_map_run(backend: Any, map_run_arn: str) -> dict[str, Any]:
        from moto.stepfunctions.exceptions import ResourceNotFound

        for execution in with_worker(backend):
            record = _env_of(execution).map_run_record_pool_manager.get(map_run_arn)
            if record is not None:
                described: dict[str, Any] = record.describe()
                return described
        raise ResourceNotFound(map_run_arn)

    def list_map_runs(backend: Any, execution_arn: str) -> dict[str, Any]:
        env = _env_of(backend.describe_execution(execution_arn=execution_arn))
        if env is None:  # starting: no map run yet
            return {"mapRuns": []}
        records = env.map_run_record_pool_manager.get_all()
        return {"mapRuns": [record.list_item() for record in records]}

    original_update = StepFunctionsParserBackend.update_map_run

    def update_map_run(backend: Any, map_run_arn: str, *args: Any, **kwargs: Any) -> Any:
        executions = backend._get_executions
        backend._get_executions = lambda *a, **k: [e for e in executions(*a, **k)
                                                   if _env_of(e) is not None]
        try:
            return original_update(backend, map_run_arn, *args, **kwargs)
        finally:
            del backend._get_executions

    patch(StepFunctionsParserBackend, "describe_map_run", describe_map_run)
    patch(StepFunctionsParserBackend, "list_map_runs", list_map_runs)
    patch(StepFunctionsParserBackend, "update_map_run", update_map_run)


def map_run_children(backend: Any, map_run_arn: str) -> list[dict[str, Any]] | None:
    """The child executions of a map run (ListExecutions' items), or None if unknown."""
    for execution in backend._get_executions():
        env = _env_of(execution)
        if env is None:
            continue
        record = env.map_run_record_pool_manager.get(map_run_arn)
        if record is None:
            continue
        results: MapRunResults = getattr(record, _ATTRIBUTE, None) or MapRunResults()
        with results.lock:
            entries = list(results.entries)
        children = []
        for e in entries:
            item: dict[str, Any] = {
                "executionArn": e["ExecutionArn"],
                "stateMachineArn": e.get("StateMachineArn", record.map_state_machine_arn),
                "name": e["Name"], "status": e["Status"], "startDate": e["StartDate"],
                "mapRunArn": map_run_arn}
            if "StopDate" in e:
                item["stopDate"] = e["StopDate"]
            children.append(item)
        return children
    return None


def _patch_list_executions(patch: Callable[[Any, str, Any], None]) -> None:
    from moto.stepfunctions.responses import StepFunctionResponse

    original = StepFunctionResponse.list_executions

    def list_executions(response: Any) -> Any:
        map_run_arn = response._get_param("mapRunArn")
        if not map_run_arn:
            return original(response)
        from moto.core.responses import ActionResult

        children = map_run_children(response.stepfunction_backend, map_run_arn)
        if children is None:
            from moto.stepfunctions.exceptions import ResourceNotFound

            raise ResourceNotFound(map_run_arn)
        wanted = response._get_param("statusFilter")
        if wanted:
            children = [c for c in children if c["status"] == wanted]
        return ActionResult({"executions": children})

    patch(StepFunctionResponse, "list_executions", list_executions)
