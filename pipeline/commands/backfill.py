"""`imgpipe backfill s3://bucket/prefix`: classify what was there before, and watch it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from pipeline.commands import add_aws_options, settings_from

HELP = "classify every object under an S3 prefix (Step Functions Distributed Map)"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "backfill", help=HELP,
        description=HELP + ". Starts one execution of the backfill state machine and follows "
        "it with a progress bar. Objects that already have a record for the model and their "
        "current ETag are skipped, so re-running after an interruption continues where it "
        "stopped. Works on AWS, or on `imgpipe local` with --endpoint-url / AWS_ENDPOINT_URL.",
    )
    p.add_argument("uri", metavar="s3://BUCKET/PREFIX", help="what to classify")
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
    from pipeline.keys import parse_s3_uri

    try:
        bucket, prefix = parse_s3_uri(args.uri, require_key=False)
    except ValueError as e:
        print(f"imgpipe backfill: {e}", file=sys.stderr)
        return 2
    from pipeline.aws import client_for, is_loopback

    settings = settings_from(args)
    sfn = client_for("stepfunctions", settings)
    # On AWS a map run counts objects; the local stack's Map runs over batches of them.
    unit = "batches" if settings.endpoint_url and is_loopback(settings.endpoint_url) \
        else "objects"
    arn = _state_machine_arn(sfn, args.state_machine
                             or os.environ.get("IMGPIPE_STATE_MACHINE", "imgpipe-backfill"))
    request: dict[str, Any] = {"bucket": bucket, "prefix": prefix,
                               "overwrite": bool(args.overwrite)}
    if args.model:
        request["model"] = args.model
    name = "backfill-" + time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    started = time.monotonic()
    execution = sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps(request))
    execution_arn = execution["executionArn"]
    print(f"started {execution_arn}", file=sys.stderr, flush=True)
    if not args.wait:
        print(execution_arn)
        return 0
    desc = _follow(sfn, execution_arn, started, unit)
    elapsed = time.monotonic() - started
    if desc["status"] != "SUCCEEDED":
        cause = desc.get("cause") or desc.get("error") or "no cause given"
        print(f"imgpipe backfill: execution {desc['status']}: {cause}", file=sys.stderr)
        return 1
    summary = json.loads(desc.get("output") or "{}")
    summary["elapsed_s"] = round(elapsed, 2)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, elapsed)
    return 1 if summary.get("counts", {}).get("failed") else 0


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


def _follow(sfn: Any, execution_arn: str, started: float, unit: str) -> dict[str, Any]:
    """Poll until the execution ends, drawing a progress bar from DescribeMapRun counts."""
    tty = sys.stderr.isatty()
    last_line = ""
    last_print = 0.0
    while True:
        desc: dict[str, Any] = sfn.describe_execution(executionArn=execution_arn)
        counts = _map_run_counts(sfn, execution_arn)
        line = _progress_line(counts, time.monotonic() - started, desc["status"], unit)
        now = time.monotonic()
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
    counts: dict[str, int] | None, elapsed: float, status: str, unit: str = "objects"
) -> str:
    if not counts or not counts.get("total"):
        return f"  listing and starting ... {elapsed:5.0f} s  ({status.lower()})"
    total = counts["total"]
    done = counts.get("succeeded", 0) + counts.get("failed", 0) + counts.get("timedOut", 0) \
        + counts.get("aborted", 0)
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("inf")
    width = 30
    filled = int(width * done / total)
    bar = "#" * filled + "-" * (width - filled)
    eta_text = f"ETA {eta:4.0f} s" if eta != float("inf") else "ETA    ?"
    failed = counts.get("failed", 0)
    return (f"  [{bar}] {done}/{total} {unit}  {rate:6.1f}/s  {eta_text}"
            + (f"  {failed} failed" if failed else ""))


def _print_summary(summary: dict[str, Any], elapsed: float) -> None:
    counts = summary.get("counts", {})
    images = summary.get("images", 0)
    rate = images / elapsed if elapsed > 0 else 0.0
    models = ", ".join(summary.get("models", [])) or "?"
    print(f"backfill of s3://{summary.get('request', {}).get('bucket', '?')}/"
          f"{summary.get('request', {}).get('prefix', '')} with {models}:")
    for key, text in (("classified", "classified"), ("skipped", "skipped (already done)"),
                      ("rejected", "rejected (not a usable image)"),
                      ("gone", "gone (deleted meanwhile)"),
                      ("superseded", "superseded (overwritten meanwhile)"),
                      ("failed", "failed (transient; re-run to retry)"),
                      ("ignored", "ignored (folder markers, results)")):
        print(f"  {text:38} {counts.get(key, 0):>8}")
    print(f"  {'elapsed':38} {elapsed:>7.1f}s")
    print(f"  {'images/s':38} {rate:>8.1f}")
