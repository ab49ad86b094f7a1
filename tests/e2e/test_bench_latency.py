"""The benchmark's billed-duration section runs end to end (quick mode, tiny photos): for
each image set, the core's CPU time and the ingest and backfill functions' billed duration
with and without AWS-like latency, each a figure; the latency was really applied (the
emulator counted its delays in those rounds). No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

from imgpipe.bench import run_benchmark
from imgpipe.bench.latency import section_billed_duration


def test_the_billed_duration_section_measures_both_functions_with_and_without_latency(
        tmp_path: Path) -> None:
    result = run_benchmark(tmp_path / "out", quick=True, images=2, big_size=(640, 480),
                           web_size=(320, 240), report_path=tmp_path / "REPORT.md",
                           sections=[section_billed_duration])
    keys = [r.key for r in result.rows]
    assert keys == [
        f"{k}.{name}" + suffix
        for name in ("12mp", "web")
        for k, suffix in [("latency.core", ".cpu_ms")] + [
            ("billed", f".{route}.{profile}.ms")
            for route in ("ingest", "backfill") for profile in ("none", "aws")]
    ]
    assert all(r.value > 0 for r in result.rows)
    assert {t.name.split(" ")[0] for t in result.targets} == {"ingest", "backfill"}
    assert all(t.verdict == "not judged (quick)" for t in result.targets)
    details = json.loads((tmp_path / "out" / "results.json").read_text())["details"]
    for name in ("12mp", "web"):
        rounds = details[f"billed.{name}.rounds"]
        assert {(x["route"], x["profile"]) for x in rounds} == {
            (route, profile) for route in ("ingest", "backfill") for profile in ("none", "aws")}
        for x in rounds:
            assert x["invocations"] >= 1, x
            if x["profile"] == "aws":  # (a long poll begun before a switch to none may
                assert x["delayed_requests"] > 0, x  # end after it, delayed: not asserted)
    text = (tmp_path / "REPORT.md").read_text()
    assert "billed duration per photo, AWS-like latency" in text
