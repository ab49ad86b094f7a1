"""`imgpipe backfill s3://bucket/prefix`: classify what was there before, and watch it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from imgpipe.commands import add_aws_options, settings_from

HELP = "classify every object under an S3 prefix (Step Functions Distributed Map)"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "backfill", help=HELP,
        description=HELP + ". Starts one execution of the backfill state machine and follows "
        "it with a progress bar. Objects that already have a record for the model and their "
        "current ETag are skipped, so re-running after an interruption continues where it "
        "stopped. Works on AWS, or on `imgpipe local` with --endpoint-url / AWS_ENDPOINT_URL.",
    )
    p.add_argument("uri", metavar="s3://BUCKET/PREFIX", nargs="?", default="",
                   help="what to classify")
    p.add_argument("--follow", default="", metavar="EXECUTION_ARN",
                   help="follow an execution started earlier (its ARN is printed at the "
                   "start; Ctrl-C only stops following, the execution goes on)")
    p.add_argument("--model", default="", metavar="SOURCE",
                   help="model source for this run: a packaged model's name "
                   "(efficientnet-lite0-int8), a directory, manifest.json or s3:// URI "
                   "(default: the function's configured model)")
    p.add_argument("--overwrite", action="store_true",
                   help="classify again even where a record for this model and ETag exists")
    p.add_argument("--wait", dest="wait", action="store_true", default=True,
                   help="follow the execution to the end (default)")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="print the execution ARN and return at once")
    p.add_argument("--state-machine", default=None, metavar="ARN_OR_NAME",
                   help="the backfill state machine (default: IMGPIPE_STATE_MACHINE or "
                   "imgpipe-backfill)")
    add_aws_options(p)
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.aws import client_for
    from pipeline.keys import parse_s3_uri

    if bool(args.uri) == bool(args.follow):
        print("imgpipe backfill: give s3://BUCKET/PREFIX to start a backfill, or --follow ARN "
              "to follow one already started", file=sys.stderr)
        return 2
    bucket = prefix = ""
    if args.uri:
        try:
            bucket, prefix = parse_s3_uri(args.uri, require_key=False)
        except ValueError as e:
            print(f"imgpipe backfill: {e}", file=sys.stderr)
            return 2
    settings = settings_from(args)
    sfn = client_for("stepfunctions", settings)
    started = time.monotonic()
    if args.follow:
        execution_arn = args.follow
        try:
            described = sfn.describe_execution(executionArn=execution_arn)
        except Exception as e:
            code, sentence = _unknown_execution(e, execution_arn)
            if not code:
                raise
            print(f"imgpipe backfill: {sentence}", file=sys.stderr)
            return code
        request = json.loads(described.get("input") or "{}")
        bucket, prefix = str(request.get("bucket", "")), str(request.get("prefix", ""))
    else:
        s3 = client_for("s3", settings)
        missing = _missing_bucket(s3, bucket)
        if missing:
            print(f"imgpipe backfill: {missing}", file=sys.stderr)
            return 1
        arn = _state_machine_arn(sfn, args.state_machine
                                 or os.environ.get("IMGPIPE_STATE_MACHINE", "imgpipe-backfill"))
        request = {"bucket": bucket, "prefix": prefix, "overwrite": bool(args.overwrite)}
        if args.model:
            request["model"] = args.model
        name = "backfill-" + time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        execution = sfn.start_execution(stateMachineArn=arn, name=name,
                                        input=json.dumps(request))
        execution_arn = execution["executionArn"]
        print(f"started {execution_arn}", file=sys.stderr, flush=True)
        if not args.wait:
            print(execution_arn)
            return 0
    unit = _progress_unit(sfn, execution_arn)
    total = TotalCounter(sfn, execution_arn, unit, client_for("s3", settings), bucket, prefix)
    try:
        desc = _follow(sfn, execution_arn, started, unit, total)
    except KeyboardInterrupt:
        print(f"\nimgpipe backfill: stopped following; the execution goes on "
              f"{'in the local stack' if unit == 'batches' else 'in AWS'}. Follow it again "
              f"with\n  imgpipe backfill --follow {execution_arn}\nor stop it with\n"
              f"  aws stepfunctions stop-execution --execution-arn {execution_arn}",
              file=sys.stderr)
        return 130
    finally:
        total.stop()
    elapsed = time.monotonic() - started
    if desc["status"] != "SUCCEEDED":
        print(f"imgpipe backfill: execution {desc['status']}: {_cause(desc)}", file=sys.stderr)
        counts = _map_run_counts(sfn, execution_arn)
        if counts and counts.get("total"):
            failed = sum(int(counts.get(k, 0)) for k in ("failed", "timedOut", "aborted"))
            print(f"  {failed} of {counts['total']} {unit} failed, "
                  f"{counts.get('succeeded', 0)} succeeded", file=sys.stderr)
        return 1
    summary = json.loads(desc.get("output") or "{}")
    summary["elapsed_s"] = round(elapsed, 2)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, elapsed, model=_model_named(summary, request))
    return 1 if summary.get("counts", {}).get("failed") else 0


def _unknown_execution(error: Exception, arn: str) -> tuple[int, str]:
    """(exit code, sentence) for an execution that cannot be followed; (0, "") otherwise."""
    from pipeline.aws import error_code

    code = error_code(error)
    if code == "InvalidArn":
        return 2, (f"--follow takes an execution ARN (arn:aws:states:REGION:ACCOUNT:"
                   f"execution:MACHINE:NAME, printed when a backfill starts), not {arn!r}")
    if code == "ExecutionDoesNotExist":
        return 1, (f"no execution {arn} (check the ARN, and --region or --endpoint-url; "
                   "`aws stepfunctions list-executions` lists them)")
    return 0, ""


def _missing_bucket(s3: Any, bucket: str) -> str:
    """A sentence when the bucket surely does not exist (else ""): the execution would
    fail on its first listing with an error about objects."""
    from pipeline.aws import error_code

    try:
        s3.head_bucket(Bucket=bucket)
    except Exception as e:
        if error_code(e) in ("404", "NoSuchBucket", "NotFound"):
            return (f"bucket {bucket!r} does not exist (check its name; `aws s3 ls` lists "
                    "your buckets); no backfill started")
        # 403 and the like: the state machine's role may read what this caller cannot.
    return ""


def _cause(desc: Mapping[str, Any]) -> str:
    """The failure's sentence: Lambda's error JSON reduced to `errorType: errorMessage`; a
    state's own failure (States.*) named before its cause."""
    cause = desc.get("cause") or desc.get("error") or "no cause given"
    try:
        parsed = json.loads(cause)
    except (TypeError, ValueError):
        parsed = None
    if isinstance(parsed, Mapping) and parsed.get("errorMessage"):
        return f"{parsed.get('errorType', 'Error')}: {parsed['errorMessage']}"
    error = desc.get("error")
    if error and desc.get("cause") and not str(cause).startswith(str(error)):
        return f"{error}: {cause}"
    return str(cause)


def _model_named(summary: Mapping[str, Any], request: Mapping[str, Any]) -> str:
    """The model of the run: what the children reported; with no children (nothing
    listed), the requested one or the function's default."""
    from pipeline.modelstore import model_id_of

    if summary.get("models"):
        return ", ".join(summary["models"])
    wanted = str(request.get("model") or "")
    if wanted.startswith("s3://"):
        return wanted
    try:
        return model_id_of(wanted)
    except Exception:
        return wanted or "the function's model"


def _state_machine_arn(sfn: Any, wanted: str) -> str:
    from pipeline.errors import ConfigError

    if wanted.startswith("arn:"):
        return wanted
    paginator = sfn.get_paginator("list_state_machines")
    for page in paginator.paginate():
        for sm in page["stateMachines"]:
            if sm["name"] == wanted:
                return str(sm["stateMachineArn"])
    raise ConfigError(f"no state machine named {wanted!r} in this account/region (deploy "
                      f"infra/template.yaml, or start `imgpipe local`; or pass --state-machine)")


class TotalCounter:
    """How many units the run has, once that is known: a map run's own total grows while
    its reader lists the prefix (AWS) or as children start (the emulator), so a bar drawn
    against it runs backwards.

    On AWS (objects) the prefix is counted here, in a thread, with the same listing the
    ItemReader makes; on the local stack (batches) the planner's step reports the number of
    batches before the Map starts, and the execution history has it.
    """

    def __init__(self, sfn: Any, execution_arn: str, unit: str, s3: Any, bucket: str,
                 prefix: str) -> None:
        self._sfn, self._arn, self._unit = sfn, execution_arn, unit
        self._value: int | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if unit == "objects":
            self._thread = threading.Thread(target=self._count, args=(s3, bucket, prefix),
                                            daemon=True)
            self._thread.start()

    def get(self) -> int | None:
        if self._value is None and self._unit == "batches":
            self._value = _planned_batches(self._sfn, self._arn)
        return self._value

    def stop(self) -> None:
        self._stopping.set()

    def _count(self, s3: Any, bucket: str, prefix: str) -> None:
        n = 0
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix=prefix):
                if self._stopping.is_set():
                    return
                n += int(page.get("KeyCount", len(page.get("Contents", []))))
        except Exception:  # no ListBucket for this caller: the bar goes without a total
            return
        self._value = n


def _progress_unit(sfn: Any, execution_arn: str) -> str:
    """What the execution's map run counts, as its state machine says: objects where its
    Map lists the prefix (ItemReader `s3:listObjectsV2`, as on AWS); batches where the Map
    reads a JSON array of them (`s3:getObject`: the local stack lists and batches in a
    step of its own before the Map)."""
    try:
        described = sfn.describe_state_machine_for_execution(executionArn=execution_arn)
        document = json.loads(described.get("definition") or "{}")
    except Exception:  # not allowed to look: AWS's unit
        return "objects"
    readers = [state["ItemReader"].get("Resource", "") for state in _states(document)
               if state.get("Type") == "Map" and isinstance(state.get("ItemReader"), dict)]
    return "batches" if any(str(r).endswith(":s3:getObject") for r in readers) else "objects"


def _states(document: Any) -> Iterator[dict[str, Any]]:
    """Every state of a definition, nested ones (Map processors, Parallel branches) too."""
    for state in (document.get("States") or {}).values() if isinstance(document, dict) else ():
        if isinstance(state, dict):
            yield state
            for inner in (state.get("ItemProcessor"), state.get("Iterator"),
                          *(state.get("Branches") or [])):
                yield from _states(inner)


def _planned_batches(sfn: Any, execution_arn: str) -> int | None:
    try:
        events = sfn.get_execution_history(executionArn=execution_arn, maxResults=100)
    except Exception:
        return None
    for event in events.get("events", []):
        output = (event.get("stateExitedEventDetails") or {}).get("output")
        if output and '"plan"' in output:
            plan = json.loads(output).get("plan") or {}
            if isinstance(plan.get("batches"), int):
                return int(plan["batches"])
    return None


class Rate:
    """Units per second since the first unit finished (the start-up before it, listing and
    cold starts, says nothing about the pace), and an ETA only once a few units are done."""

    MIN_DONE = 3
    MIN_SECONDS = 2.0

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None

    def update(self, now: float, done: int) -> tuple[float | None, float | None]:
        """(rate, seconds) for `done` units at `now`; None where it means nothing yet."""
        if done <= 0:
            return None, None
        if self._first is None:
            self._first = (now, done)
        t0, d0 = self._first
        if now - t0 < self.MIN_SECONDS or done - d0 < self.MIN_DONE:
            return None, None
        return (done - d0) / (now - t0), now - t0


def _follow(sfn: Any, execution_arn: str, started: float, unit: str,
            total: TotalCounter) -> dict[str, Any]:
    """Poll until the execution ends, drawing a progress bar from DescribeMapRun counts."""
    tty = sys.stderr.isatty()
    last_line = ""
    last_print = 0.0
    rate = Rate()
    while True:
        desc: dict[str, Any] = sfn.describe_execution(executionArn=execution_arn)
        counts = _map_run_counts(sfn, execution_arn)
        now = time.monotonic()
        line = _progress_line(counts, now - started, desc["status"], unit, total.get(), rate)
        if tty:
            print("\r" + line.ljust(len(last_line)), end="", file=sys.stderr, flush=True)
        elif line != last_line and now - last_print >= 5:
            print(line, file=sys.stderr, flush=True)
            last_print = now
        last_line = line
        if desc["status"] != "RUNNING":
            if tty:
                print(file=sys.stderr)
            elif line:
                print(line, file=sys.stderr, flush=True)
            return desc
        time.sleep(1.0)


def _map_run_counts(sfn: Any, execution_arn: str) -> dict[str, int] | None:
    try:
        runs = sfn.list_map_runs(executionArn=execution_arn).get("mapRuns", [])
        if not runs:
            return None
        counts = sfn.describe_map_run(mapRunArn=runs[0]["mapRunArn"]).get("itemCounts")
        return dict(counts) if counts else None
    except Exception:  # older endpoints without map runs: fall back to a spinner
        return None


def _progress_line(
    counts: dict[str, int] | None, elapsed: float, status: str, unit: str = "objects",
    known_total: int | None = None, rate: Rate | None = None,
) -> str:
    """`[####----] 50/200 objects  5.0/s  ETA 30 s`; without a known total, the count done
    and no bar; the rate and ETA only once they mean something (see `Rate`)."""
    if not counts or not counts.get("total"):
        return f"  listing and starting ... {elapsed:5.0f} s  ({status.lower()})"
    done = counts.get("succeeded", 0) + counts.get("failed", 0) + counts.get("timedOut", 0) \
        + counts.get("aborted", 0)
    per_s, _ = (rate or Rate()).update(time.monotonic(), done)
    total = max(known_total, counts["total"]) if known_total is not None else None
    failed = counts.get("failed", 0)
    parts: list[str] = []
    if total:
        width = 30
        filled = int(width * done / total)
        parts.append(f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} {unit}")
    else:
        parts.append(f"{done} {unit} done (counting the rest)")
    if per_s:
        parts.append(f"{per_s:6.1f} {unit}/s")
        if total:
            parts.append(f"ETA {max(0.0, (total - done) / per_s):4.0f} s")
    if failed:
        parts.append(f"{failed} failed")
    return "  " + "  ".join(parts)


def _print_summary(summary: dict[str, Any], elapsed: float, model: str = "") -> None:
    counts = summary.get("counts", {})
    images = int(summary.get("images", 0))
    model = model or ", ".join(summary.get("models", [])) or "the function's model"
    where = (f"s3://{summary.get('request', {}).get('bucket', '?')}/"
             f"{summary.get('request', {}).get('prefix', '')}")
    failures = summary.get("failures") or []
    if images == 0 and not counts.get("ignored") and not summary.get("failed_batches"):
        print(f"backfill of {where} with {model}: no objects found there, nothing to "
              f"classify (check the prefix: `aws s3 ls {where}`)")
        return
    print(f"backfill of {where} with {model}:")
    for key, text in (("classified", "classified"), ("skipped", "skipped (already done)"),
                      ("rejected", "rejected (not a usable image)"),
                      ("gone", "gone (deleted meanwhile)"),
                      ("superseded", "superseded (overwritten meanwhile)"),
                      ("failed", "failed (transient; re-run to retry)"),
                      ("ignored", "ignored (folder markers, results)")):
        print(f"  {text:38} {counts.get(key, 0):>8}")
    print(f"  {'elapsed':38} {elapsed:>7.1f}s")
    if failures:
        print(f"  {summary.get('failed_batches', len(failures))} batch(es) failed after their "
              "retries; the first:")
        for failure in failures:
            error, cause = str(failure.get("error") or ""), str(failure.get("cause") or "")
            said = cause if cause.startswith(error) else f"{error}: {cause}"
            more = max(0, int(failure.get("objects") or 1) - 1)
            print(f"    {failure.get('first_key') or '?'} (+{more} more): {said}")
    worked = images - int(counts.get("skipped", 0))
    if worked > 0:
        per_s = worked / elapsed if elapsed > 0 else 0.0
        print(f"  {'images/s (skips not counted)':38} {per_s:>8.1f}")
    elif images:
        print(f"  every object already had a record for {model}: nothing was classified "
              "(--overwrite classifies again)")
