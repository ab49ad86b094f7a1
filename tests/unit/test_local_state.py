"""The journals behind `imgpipe local --state-dir` (the whole story is in tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.local.state import Journal, StateKeeper, _live_messages


def test_a_frame_cut_by_a_kill_is_dropped_and_the_file_mended(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.open()
    journal.append({"n": 1}, b"first body")
    journal.append({"n": 2}, b"\x00\xff binary")
    whole = (tmp_path / "j").read_bytes()
    journal.append({"n": 3}, b"x" * 1000)
    data = (tmp_path / "j").read_bytes()
    (tmp_path / "j").write_bytes(data[:len(whole) + 20])  # killed in the middle of frame 3
    assert list(journal.read()) == [({"n": 1}, b"first body"), ({"n": 2}, b"\x00\xff binary")]
    assert (tmp_path / "j").read_bytes() == whole, "the torn tail is cut off"
    journal.append({"n": 4})
    assert [h["n"] for h, _ in journal.read()] == [1, 2, 4]


def test_the_messages_left_are_the_last_add_of_each_id_not_deleted_since() -> None:
    def add(mid: str, queue: str) -> tuple[dict[str, str], bytes]:
        return {"op": "add", "id": mid, "queue": queue}, b""

    frames = [
        add("a", "ingest"), add("b", "ingest"), add("c", "ingest"),
        ({"op": "delete", "id": "a"}, b""),  # processed
        add("b", "dlq"),  # moved to the DLQ after its last receive
        ({"op": "delete", "id": "never-added"}, b""),  # an S3 test event of an earlier run
    ]
    live = _live_messages(frames)
    assert [(m["id"], m["queue"]) for m in live] == [("c", "ingest"), ("b", "dlq")]


def test_one_stack_at_a_time_per_state_directory(tmp_path: Path) -> None:
    first = StateKeeper(tmp_path / "state")
    with pytest.raises(SystemExit, match="in use by another running stack"):
        StateKeeper(tmp_path / "state")
    assert first.directory == tmp_path / "state"
