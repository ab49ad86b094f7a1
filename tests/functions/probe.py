"""Tiny Lambda handlers for the local runtime's tests (plumbing only): each does one thing
a real function might do wrong."""

from __future__ import annotations

import os
import time
from typing import Any

_started = time.time()
_calls = 0


def echo(event: Any, context: Any) -> dict[str, Any]:
    global _calls
    _calls += 1
    return {
        "event": event,
        "calls": _calls,  # > 1 when the process is reused (warm)
        "pid": os.getpid(),
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("AWS_LAMBDA_", "_HANDLER",
                                                                      "LAMBDA_", "AWS_REGION",
                                                                      "IMGPIPE_"))},
    }


def sleep(event: Any, context: Any) -> str:
    time.sleep(float(event.get("seconds", 60)))
    return "woke up"


def allocate(event: Any, context: Any) -> int:
    chunks = []
    for _ in range(int(event.get("mb", 4096))):
        chunks.append(bytearray(1024 * 1024))  # zero-filled: resident at once
        time.sleep(0.002)
    return len(chunks)


def fail(event: Any, context: Any) -> None:
    raise ValueError(f"no good: {event}")
