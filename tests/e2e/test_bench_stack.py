"""The benchmark's embedded-stack section runs end to end (quick mode, tiny photos): each
row it promises is there with a figure. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

from imgpipe.bench import run_benchmark
from imgpipe.bench.stack import section_local_stack


def test_the_stack_section_measures_cold_and_warm_ingest_and_backfill(tmp_path: Path) -> None:
    result = run_benchmark(tmp_path / "out", quick=True, images=2, big_size=(640, 480),
                           web_size=(320, 240), report_path=tmp_path / "REPORT.md",
                           sections=[section_local_stack])
    keys = [r.key for r in result.rows]
    assert keys == [
        "stack_ingest_cold.12mp.ips", "stack_ingest.12mp.ips", "stack_ingest.12mp.cpu_ms",
        "stack_backfill.12mp.ips", "stack_ingest.web.ips", "stack_ingest.web.cpu_ms",
        "stack_backfill.web.ips", "stack_worker.cold_s",
    ]
    assert all(r.value > 0 for r in result.rows)
    assert {t.name.split(" ")[0] for t in result.targets} == {"ingest", "backfill"}
    text = (tmp_path / "REPORT.md").read_text()
    assert "first upload, workers start cold" in text
