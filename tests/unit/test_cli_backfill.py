"""`imgpipe backfill`: argument errors, the progress line and the summary."""

from __future__ import annotations

import pytest

from pipeline.cli import main
from pipeline.commands.backfill import _print_summary, _progress_line


def test_a_uri_that_is_not_s3_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backfill", "https://example.invalid/photos/"]) == 2
    assert "s3://" in capsys.readouterr().err


def test_progress_line_shows_done_total_rate_and_eta() -> None:
    counts = {"total": 200, "succeeded": 45, "failed": 5, "running": 10, "pending": 140}
    line = _progress_line(counts, elapsed=10.0, status="RUNNING", unit="objects")
    assert "50/200 objects" in line
    assert "5.0/s" in line  # 50 done in 10 s
    assert "ETA   30 s" in line  # 150 left at 5/s
    assert "5 failed" in line
    assert line.count("#") == 7  # 50 of 200 of a 30-wide bar


def test_progress_before_the_map_run_exists() -> None:
    assert "listing" in _progress_line(None, elapsed=2.0, status="RUNNING")


def test_summary_names_every_count(capsys: pytest.CaptureFixture[str]) -> None:
    _print_summary({"request": {"bucket": "b", "prefix": "old/"}, "models": ["m@1"],
                    "images": 10, "counts": {"classified": 7, "skipped": 2, "rejected": 1}},
                   elapsed=2.0)
    out = capsys.readouterr().out
    assert "backfill of s3://b/old/ with m@1" in out
    for word, number in (("classified", "7"), ("skipped", "2"), ("rejected", "1"),
                         ("gone", "0"), ("failed", "0")):
        line = next(x for x in out.splitlines() if x.strip().startswith(word))
        assert line.split()[-1] == number
    assert "5.0" in out.splitlines()[-1]  # 10 images in 2 s
