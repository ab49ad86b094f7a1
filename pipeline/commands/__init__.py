"""The `imgpipe` subcommands: one module each, with `register(sub)` and `run(args)`."""

from __future__ import annotations

import argparse
from typing import Any


def add_aws_options(p: argparse.ArgumentParser) -> None:
    """--endpoint-url and --region, for commands that talk to AWS or the local stack."""
    p.add_argument("--endpoint-url", default=None,
                   help="AWS endpoint, e.g. http://127.0.0.1:4566 (default: AWS_ENDPOINT_URL)")
    p.add_argument("--region", default=None,
                   help="AWS region (default: AWS_REGION, else AWS_DEFAULT_REGION, else "
                   "us-east-1; either variable works)")


def settings_from(args: argparse.Namespace, **overrides: Any) -> Any:
    """Settings from the environment, with the command's --endpoint-url/--region first."""
    import os

    from pipeline.settings import Settings

    return Settings.from_env(os.environ, endpoint_url=args.endpoint_url, region=args.region,
                             **overrides)
