"""`imgpipe local`: the embedded AWS stack in the foreground until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any

HELP = "run the embedded AWS stack (emulator + ingest poller) on 127.0.0.1 until Ctrl-C"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "local", help=HELP,
        description=HELP + ". It is provisioned from infra/template.yaml, so the names are "
        "those of a deployment with the default parameters. Point the aws CLI at it with the "
        "export lines it prints.",
    )
    add_stack_options(p)
    p.set_defaults(run=run)


def add_stack_options(p: argparse.ArgumentParser, default_port: int = 4566) -> None:
    p.add_argument("--port", type=int, default=default_port,
                   help=f"emulator port on 127.0.0.1 (default {default_port})")
    p.add_argument("--model", default="", metavar="SOURCE",
                   help="a packaged model's name (efficientnet-lite0-int8), a model "
                   "directory, manifest.json or s3:// URI (default: efficientnet-lite0)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="template parameter override, e.g. --param BatchSize=32 (repeatable)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print the handler's structured (JSON) logs, one line per image")


def stack_options(args: argparse.Namespace) -> Any:
    from pipeline.errors import ConfigError
    from pipeline.local.stack import StackOptions

    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE")
        params[name] = value
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected 1..65535")
    return StackOptions(port=args.port, parameters=params, model_source=args.model,
                        log_level="INFO" if args.verbose else "WARNING")


def print_batch(result: Any) -> None:
    status = "ok" if not result.failed else f"{len(result.failed)} failed, will retry"
    if result.error:
        status = f"handler error: {result.error}"
    print(f"batch: {result.received} message(s) in {result.seconds:.2f} s, "
          f"{result.deleted} done, {status}", flush=True)


def run(args: argparse.Namespace) -> int:
    from pipeline.local.stack import LocalStack

    stack = LocalStack(stack_options(args), on_batch=print_batch)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"starting the embedded stack on {stack.endpoint_url} ...", flush=True)
    r = stack.start()
    key_json = json.dumps({"image": {"S": f"s3://{r.bucket}/{r.input_prefix}coffee.jpg"},
                           "model": {"S": _model_id(args.model)}})
    try:
        print(f"""
imgpipe local stack is up: {stack.endpoint_url}
  bucket         {r.bucket}   (upload to s3://{r.bucket}/{r.input_prefix})
  results        s3://{r.bucket}/{r.output_prefix}   and DynamoDB table {r.table}
  ingest queue   {r.queue_url}
  dead letters   {r.dlq_url}
  backfill       {r.state_machine_arn}

Point the aws CLI at it:
""" + "\n".join("  " + line for line in stack.export_lines()) + f"""

Then, for example:
  aws s3 cp samples/ s3://{r.bucket}/{r.input_prefix} --recursive
  aws dynamodb get-item --table-name {r.table} \\
      --key '{key_json}'
  imgpipe results query --label espresso

Ctrl-C stops it (state is in memory and goes with it).
""", flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping ...", flush=True)
    finally:
        stack.stop()
    print("stopped", flush=True)
    return 0



def _model_id(source: str) -> str:
    from pipeline.modelstore import model_id_of

    return "<name@version>" if source.startswith("s3://") else model_id_of(source)
