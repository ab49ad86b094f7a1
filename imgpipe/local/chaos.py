"""Faults the emulator injects on request, for fault-injection runs (`tools/chaos.py`).

    IMGPIPE_CHAOS_LOST_PUT_REPLIES=0.05   lose the reply of 5 % of DynamoDB PutItem calls
    IMGPIPE_CHAOS_SEED=7                  make the choice repeatable
    IMGPIPE_CHAOS_LOG=PATH                append one line per injected fault

A lost reply is the write applied and its answer replaced by a 500 InternalServerError,
as a network that drops the response (or a 5xx after the commit) looks to the caller:
botocore's retry then sends the same conditional put again and meets its own first
attempt. Nothing is injected unless the variable is set; `imgpipe local` never sets it.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from imgpipe.local.wsgi import WsgiApp, call

__all__ = ["LostPutReplies", "chaos_from_env"]


class LostPutReplies:
    """WSGI middleware: applies PutItem, then answers 500 instead of its reply with
    `probability` (only for writes that succeeded: a refused condition answers as is)."""

    def __init__(self, app: WsgiApp, probability: float, seed: int | None = None,
                 log_path: str = "") -> None:
        self.app = app
        self.probability = probability
        self.log_path = log_path
        self.lost = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).endswith(".PutItem"):
            return self.app(environ, start_response)
        with self._lock:
            lose = self._rng.random() < self.probability
        if not lose:
            return self.app(environ, start_response)
        status, headers, body = call(self.app, environ)
        if not status.startswith("200"):
            start_response(status, headers)
            return [body]
        self._record(environ)
        payload = json.dumps({
            "__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
            "message": "chaos: the write was applied and its reply lost"}).encode()
        start_response("500 Internal Server Error", [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("Content-Length", str(len(payload)))])
        return [payload]

    def _record(self, environ: Mapping[str, Any]) -> None:
        with self._lock:
            self.lost += 1
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write("lost-put-reply\n")


def chaos_from_env(app: WsgiApp, env: Mapping[str, str] | None = None) -> WsgiApp:
    """`app`, wrapped in the faults the environment asks for (none: `app` itself)."""
    env = os.environ if env is None else env
    probability = float(env.get("IMGPIPE_CHAOS_LOST_PUT_REPLIES") or 0)
    if probability <= 0:
        return app
    seed = env.get("IMGPIPE_CHAOS_SEED")
    return LostPutReplies(app, probability, int(seed) if seed else None,
                          env.get("IMGPIPE_CHAOS_LOG", ""))
