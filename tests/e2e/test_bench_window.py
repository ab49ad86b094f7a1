"""The batching-window section runs end to end on the embedded stack (quick mode: windows of
0 and 1 s, tiny photos): one photo's wait and the steady rate's cost per photo for each
window, with figures. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

from imgpipe.bench import run_benchmark
from imgpipe.bench.window import section_batching_window


def test_the_window_section_measures_one_photo_and_a_steady_rate_per_window(
        tmp_path: Path) -> None:
    result = run_benchmark(tmp_path / "out", quick=True, images=2, big_size=(640, 480),
                           web_size=(320, 240), report_path=tmp_path / "REPORT.md",
                           sections=[section_batching_window])
    assert [r.key for r in result.rows] == [
        "window.0.single_s", "window.0.r20.usd_per_m",
        "window.1.single_s", "window.1.r20.usd_per_m",
    ]
    assert all(r.value > 0 for r in result.rows)
    # Each rate's cost is set against the widest window's (1 s in a quick run).
    assert {r.key: r.ratio for r in result.rows}["window.1.r20.usd_per_m"] == \
        "1.00x the 1 s window's"
    text = (tmp_path / "REPORT.md").read_text()
    assert "one 12 MP photo at a time, warm" in text
