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


LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def setup_hint(error: BaseException | None) -> str:
    """A sentence for the two faults that mean "AWS is not set up in this terminal" (no
    endpoint answers, no credentials), found anywhere in `error`'s chain; "" for others.
    Without it a person saw `EndpointConnectionError ... 4566` or `NoCredentialsError`."""
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, NoCredentialsError):
            return ("no AWS credentials in this terminal: for the local stack paste the export "
                    "lines `imgpipe local` prints (AWS_ACCESS_KEY_ID=test ...); for AWS, "
                    "configure credentials (`aws configure`, or AWS_PROFILE)")
        if isinstance(error, EndpointConnectionError):
            url = str(error.kwargs.get("endpoint_url", ""))
            if any(f"//{host}" in url for host in LOCAL_HOSTS):
                return (f"nothing answers at {url}: is `imgpipe local` running (and on that "
                        "port)? Start it in another terminal, then paste the export lines "
                        "it prints here")
            return (f"cannot reach {url}: for the local stack, paste the export lines "
                    "`imgpipe local` prints (AWS_ENDPOINT_URL=...); for AWS, check the "
                    "network and --region")
        error = error.__cause__ or error.__context__
    return ""
