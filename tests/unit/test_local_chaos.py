"""The emulator's fault hook for fault-injection runs (`imgpipe.local.chaos`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from imgpipe.local.chaos import LostPutReplies, chaos_from_env


class Table:
    """A WSGI app that 'writes' every PutItem it is sent; the condition fails on 'taken'."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        body = environ["body"]
        if body == "taken":
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [b'{"__type": "ConditionalCheckFailedException"}']
        self.writes.append(body)
        start_response("200 OK", [("Content-Type", "application/x-amz-json-1.0")])
        return [b"{}"]


def call(app: Any, target: str, body: str) -> tuple[str, bytes]:
    got: list[str] = []
    out = b"".join(app({"HTTP_X_AMZ_TARGET": target, "body": body},
                       lambda status, headers: got.append(status)))
    return got[0], out


def test_a_lost_reply_is_a_write_applied_and_answered_500(tmp_path: Any) -> None:
    table = Table()
    log = tmp_path / "faults.log"
    app = LostPutReplies(table, probability=1.0, seed=1, log_path=str(log))
    status, out = call(app, "DynamoDB_20120810.PutItem", "item")
    assert status.startswith("500") and table.writes == ["item"]
    assert json.loads(out)["__type"].endswith("#InternalServerError")
    # A refused condition and other operations answer as they are.
    assert call(app, "DynamoDB_20120810.PutItem", "taken")[0].startswith("400")
    assert call(app, "DynamoDB_20120810.GetItem", "x")[0].startswith("200")
    assert app.lost == 1 and log.read_text() == "lost-put-reply\n"


def test_nothing_is_injected_unless_asked() -> None:
    table = Table()
    assert chaos_from_env(table, {}) is table
    assert chaos_from_env(table, {"IMGPIPE_CHAOS_LOST_PUT_REPLIES": "0"}) is table
    assert isinstance(chaos_from_env(table, {"IMGPIPE_CHAOS_LOST_PUT_REPLIES": "0.1"}),
                      LostPutReplies)
