"""`imgpipe`: the command line.

Each subcommand lives in `imgpipe/commands/<name>.py` with two functions,
`register(subparsers)` and `run(args) -> int`; modules keep their heavy imports inside
`run` so `imgpipe --help` and tab completion stay instant.

Exit codes: 0 ok, 1 something failed (said in one line), 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from imgpipe.commands import setup_hint
from pipeline.errors import ImgpipeError

__all__ = ["main", "build_parser"]

COMMANDS: tuple[str, ...] = ("classify", "demo", "local", "backfill", "results", "model",
                             "bench", "redrive", "reconcile", "report", "cost", "plan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgpipe",
        description="Event-driven image classification on AWS, runnable on one machine.",
        epilog="Run `imgpipe COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"imgpipe {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"imgpipe.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except ImgpipeError as e:
        hint = setup_hint(e)
        print(f"imgpipe {args.command}: {hint or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"imgpipe {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # botocore's "no endpoint" and "no credentials": one sentence
        hint = setup_hint(e)
        if not hint:
            raise
        print(f"imgpipe {args.command}: {hint}", file=sys.stderr)
        return 1


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("imgpipe")
    except Exception:  # pragma: no cover - running from a plain checkout
        return "0+unknown"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
