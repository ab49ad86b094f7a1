"""Shared test helpers: the event JSON fixtures in tests/events/."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Hypothesis' per-example deadline is a timed assertion: on a loaded 2-core machine it fails
# correct code. Examples are still bounded by their count; speed belongs to `imgpipe bench`.
settings.register_profile("imgpipe", deadline=None)
settings.load_profile("imgpipe")

EVENTS_DIR = Path(__file__).parent / "events"


def event_path(name: str) -> Path:
    path = EVENTS_DIR / (name if name.endswith(".json") else f"{name}.json")
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in EVENTS_DIR.glob("*.json")))
        raise FileNotFoundError(f"no event fixture {path.name!r}; available: {available}")
    return path


def load_event(name: str) -> Any:
    """The parsed JSON of tests/events/<name>(.json)."""
    return json.loads(event_path(name).read_text(encoding="utf-8"))


def load_event_text(name: str) -> str:
    """The raw text of tests/events/<name>(.json), e.g. to use as an SQS message body."""
    return event_path(name).read_text(encoding="utf-8")


@pytest.fixture(name="load_event")
def _load_event_fixture() -> Callable[[str], Any]:
    return load_event
