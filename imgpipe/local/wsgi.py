"""What the emulator's middlewares (journal, latency, chaos) share: the WSGI app type, and
calling the app underneath for its whole answer."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["WsgiApp", "call"]

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def call(app: WsgiApp, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """`app`'s answer to `environ`: (status, headers, body), its iterable closed."""
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any
                       ) -> Callable[[bytes], None]:
        got["status"], got["headers"] = status, headers
        return lambda _data: None

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return got["status"], got["headers"], body
