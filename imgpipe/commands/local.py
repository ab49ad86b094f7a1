"""`imgpipe local`: the embedded AWS stack in the foreground until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

HELP = ("run the embedded AWS stack (emulator, Lambda runtime, ingest poller) on 127.0.0.1 "
        "until Ctrl-C")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "local", help=HELP,
        description=HELP + ". It is provisioned from infra/template.yaml, so the names are "
        "those of a deployment with the default parameters. Point the aws CLI at it with the "
        "export lines it prints.",
    )
    add_stack_options(p)
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="keep the stack's data (objects, queued messages, table items) in DIR "
                   "across restarts, kill -9 included; without it, nothing survives a stop")
    p.set_defaults(run=run)


def activate_lines() -> list[str]:
    """`source .../bin/activate` when imgpipe runs from a venv: the other terminal needs its
    `imgpipe` and `aws` (`make demo` and `make local` install both)."""
    import os
    import sys

    if sys.prefix == sys.base_prefix:
        return []
    venv = os.path.relpath(sys.prefix) if sys.prefix.startswith(os.getcwd() + os.sep) \
        else sys.prefix
    return [f"source {venv}/bin/activate"]


def add_stack_options(p: argparse.ArgumentParser, default_port: int = 4566) -> None:
    p.add_argument("--port", type=int, default=default_port,
                   help=f"emulator port on 127.0.0.1 (default {default_port})")
    p.add_argument("--api-port", type=int, default=None if default_port else 0,
                   metavar="PORT",
                   help="port of the HTTP API and the upload page on 127.0.0.1 (default: "
                   + ("the emulator's port + 1" if default_port else "any free port")
                   + "; 0: any free port)")
    p.add_argument("--model", default="", metavar="SOURCE",
                   help="a packaged model's name (efficientnet-lite0-int8), a model "
                   "directory, manifest.json or s3:// URI (default: efficientnet-lite0)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="template parameter override, e.g. --param BatchSize=32 (repeatable)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print the functions' structured (JSON) logs, one line per image")
    p.add_argument("--package", nargs="?", const="", default=None, metavar="DIR",
                   help="run the functions from the built package (default DIR: "
                   "build/package/<this machine's arch>/ from `make package`) with the "
                   "runtime interpreter "
                   "of `make runtime-venv`, as Lambda does; without it, from the source "
                   "tree with this interpreter (development mode)")
    p.add_argument("--runtime-python", default=None, metavar="PATH",
                   help="interpreter of the --package workers (default: "
                   ".venv-runtime/bin/python)")
    p.add_argument("--batching-window", type=int, default=None, metavar="SECONDS",
                   help="override the event source mapping's MaximumBatchingWindowInSeconds "
                   "locally (default: the template's)")
    p.add_argument("--latency", default="none", metavar="PROFILE",
                   help="hold each answer of the emulator back as long as AWS's would take, "
                   "by operation: aws (imgpipe/local/latency_aws.json: documented figures, "
                   "each with its source), none (default) or a JSON table of your own")
    p.add_argument("--record-calls", default=None, metavar="FILE",
                   help="append every AWS call the functions make (function, service, "
                   "operation, resources) to FILE, one JSON line a call, for a check against "
                   "their roles' policies (the emulator does not enforce IAM)")


def stack_options(args: argparse.Namespace) -> Any:
    from imgpipe.local.stack import StackOptions
    from pipeline.errors import ConfigError

    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE")
        params[name] = value
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected 1..65535")
    api_port = args.port + 1 if args.api_port is None else args.api_port
    if not 0 <= api_port <= 65535 or api_port == args.port:
        raise ConfigError(f"--api-port {api_port}: expected 0..65535, not the emulator's port")
    package, python = None, args.runtime_python
    if args.package is not None:
        from imgpipe.local.stack import SOURCE_ROOT

        package = Path(args.package) if args.package else _default_package(SOURCE_ROOT)
        python = python or str(SOURCE_ROOT / ".venv-runtime" / "bin" / "python")
    state_dir = getattr(args, "state_dir", None)
    from imgpipe.local.latency import load_table

    load_table(getattr(args, "latency", "none"))  # an unknown table: one sentence, now
    return StackOptions(port=args.port, parameters=params, model_source=args.model,
                        log_level="INFO" if args.verbose else "WARNING",
                        package=package, runtime_python=python,
                        batching_window_s=args.batching_window, api_port=api_port,
                        latency=getattr(args, "latency", "none"),
                        call_log=Path(args.record_calls).expanduser().resolve()
                        if getattr(args, "record_calls", None) else None,
                        state_dir=Path(state_dir).expanduser().resolve() if state_dir else None)


def _default_package(root: Path) -> Path:
    """`make package`'s output for this machine's architecture (Lambda's names for them):
    the one whose native wheels load here."""
    import platform

    machine = platform.machine().lower()
    arch = "arm64" if machine in ("aarch64", "arm64") else "x86_64"
    return root / "build" / "package" / arch


def print_batch(result: Any) -> None:
    status = "ok" if not result.failed else f"{len(result.failed)} failed, will retry"
    if result.error:
        status = f"function error: {result.error}"
    print(f"batch: {result.received} message(s) in {result.seconds:.2f} s, "
          f"{result.deleted} done, {status}", flush=True)


def _existing_bucket_hint(bucket: str) -> str:
    return f"""
The stack uses an existing bucket ({bucket}) and creates none; its uploads arrive through
EventBridge. Create the bucket (unless this emulator has it already) and turn EventBridge on:
  aws s3api create-bucket --bucket {bucket}
  aws s3api put-bucket-notification-configuration --bucket {bucket} \\
      --notification-configuration '{{"EventBridgeConfiguration": {{}}}}'"""


def run(args: argparse.Namespace) -> int:
    from imgpipe.local.stack import LocalStack

    stop = threading.Event()
    stack = LocalStack(stack_options(args), on_batch=print_batch,
                       on_emulator_exit=lambda _sentence: stop.set())
    if args.verbose:  # the workers' starts and stops too
        logging.basicConfig(format="%(name)s: %(message)s")
        logging.getLogger("imgpipe.local").setLevel(logging.INFO)

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"starting the embedded stack on {stack.endpoint_url} ...", flush=True)
    r = stack.start()
    window = (f"{stack.options.batching_window_s} s (local override; the template says "
              f"{r.batching_window_s} s)" if stack.options.batching_window_s is not None
              else f"{r.batching_window_s} s")
    functions = "\n".join(
        f"  {'lambda':<14} {pool.spec.name}: {pool.spec.handler}, {pool.spec.memory_mb} MB, "
        f"{pool.spec.timeout_s:g} s, up to {pool.max_workers} worker(s)"
        for pool in stack.pools.values())
    key_json = json.dumps({"image": {"S": f"s3://{r.bucket}/{r.input_prefix}coffee.jpg"},
                           "model": {"S": _model_id(args.model)}})
    if stack.options.parameters.get("ExistingBucketName"):
        print(_existing_bucket_hint(r.bucket), flush=True)
    try:
        print(f"""
imgpipe local stack is up: {stack.endpoint_url}
  bucket         {r.bucket}   (upload to s3://{r.bucket}/{r.input_prefix})
  results        s3://{r.bucket}/{r.output_prefix}   and DynamoDB table {r.table}
  ingest queue   {r.queue_url}
  dead letters   {r.dlq_url}
  backfill       {r.state_machine_arn}
{functions}
  functions run  {stack.mode}
                 (Runtime API workers under awslambdaric; timeout and memory enforced)
  ingest         batches of {r.batch_size}, batching window {window}
  latency        {_latency_line(stack.options.latency)}
  HTTP API       {stack.api_url}   (the function URL of {r.api_function}; AuthType is
                 not checked locally: requests need no signature)
  upload page    {stack.api_url}/

Point the aws CLI (and imgpipe) at it, in another terminal:
""" + "\n".join("  " + line for line in [*activate_lines(), *stack.export_lines()]) + f"""

Then, for example:
  aws s3 cp samples/ s3://{r.bucket}/{r.input_prefix} --recursive --exclude '*' \\
      --include '*.jpg'
  aws dynamodb get-item --table-name {r.table} \\
      --key '{key_json}'
  imgpipe results query --label espresso
  sed "s/2026-11-28T12:00:00.000Z/$(date -u +%FT%T.000Z)/" \\
      tests/events/sqs_local_coffee.json > /tmp/sqs_local_coffee.json
  aws lambda invoke --function-name {r.ingest_function} \\
      --payload fileb:///tmp/sqs_local_coffee.json /tmp/out.json
  curl --data-binary @samples/coffee.jpg -H 'Content-Type: image/jpeg' \\
      $IMGPIPE_API_URL/classify

""" + _state_line(stack), flush=True)
        while not stop.wait(0.5):
            pass
        if stack.emulator_failure:
            from pipeline.errors import ImgpipeError

            raise ImgpipeError(stack.emulator_failure)
        print("stopping ...", flush=True)
    finally:
        stack.stop()
    print("stopped", flush=True)
    return 0



def _state_line(stack: Any) -> str:
    state_dir, restored = stack.options.state_dir, stack.restored
    if state_dir is None:
        return ("Ctrl-C stops it. NOTHING SURVIVES A STOP: objects, queued messages and "
                "records live in memory only (start with --state-dir DIR to keep them).\n")
    brought = (f"restored {restored['writes']:,} write(s) and {restored['messages']:,} queued "
               f"message(s) in {restored['seconds']:.1f} s" if restored else "nothing to restore")
    failed = (f"; {restored['failed']:,} write(s) could not be replayed"
              if restored and restored.get("failed") else "")
    notes = "".join(f"NOTE: {note}.\n" for note in (restored or {}).get("notes") or [])
    return (f"State is kept in {state_dir} ({brought}{failed}); it survives a stop, kill -9 "
            f"included. Ctrl-C stops it; restart with the same --state-dir to continue.\n"
            + notes)


def _latency_line(profile: str) -> str:
    if profile in ("", "none"):
        return "none (loopback; --latency aws answers as late as AWS would)"
    return (f"{profile}: each answer held back by its operation's figure "
            "(imgpipe/local/latency.py)")


def _model_id(source: str) -> str:
    from pipeline.modelstore import model_id_of

    return "<name@version>" if source.startswith("s3://") else model_id_of(source)
