"""Smoke test of the benchmark harness: tiny images, quick mode, no timing assertions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from imgpipe.bench import BenchContext, Row, packaged_runtime, run_benchmark

EXPECTED_KEYS = [
    *(f"model.b{b}.ips" for b in (1, 8, 16, 32)),
    "infer.1t.ms",
    *(f"decode.{s}.{p}.ms" for s in ("12mp", "web") for p in ("draft", "full")),
    *(f"{what}.{s}.ips" for s in ("12mp", "web") for what in ("bound", "core", "naive")),
    "cold_start.s",
    "rss.b16.mib",
    "rss.b32.mib",
]


def test_quick_run_writes_a_complete_report(tmp_path: Path) -> None:
    seen: list[float] = []

    def extra(ctx: BenchContext) -> list[Row]:
        # What a later section does: put its figure next to the core's, from the same run.
        core = ctx.values["core.12mp.ips"]
        seen.append(core)
        return [Row("extra.ips", "extra section", core / 2, "img/s", f"core {core:.1f}")]

    report = tmp_path / "REPORT.md"
    result = run_benchmark(
        tmp_path / "out", quick=True, images=2, big_size=(320, 240), web_size=(160, 120),
        report_path=report, extra_sections=[extra],
    )

    assert report.is_file() and result.report_path == report
    text = report.read_text()
    assert "## Machine" in text and result.machine.cpu_model in text
    for row in result.rows:
        assert row.label in text
    keys = [r.key for r in result.rows]
    expected = list(EXPECTED_KEYS)
    if packaged_runtime():  # `make package runtime-venv` made them (tests/package does)
        expected.insert(expected.index("cold_start.s") + 1, "cold_start.packaged.s")
    assert keys == [*expected, "extra.ips"]
    assert all(r.value > 0 for r in result.rows)
    assert seen and seen[0] > 0

    assert len(result.targets) == 4
    for t in result.targets:
        assert t.measured > 0
        assert t.name in text and t.verdict == "not judged (quick)"  # nor PASS nor FAIL

    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["key"] for r in doc["rows"]] == keys
    assert doc["machine"]["cpus_available"] >= 1
    assert len(list((tmp_path / "out" / "images").rglob("*.jpg"))) == 4

    # `imgpipe cost` reads the per-image CPU time a run measured (a quick run beside its
    # results; a full one into bench/cost-inputs.json).
    from imgpipe.cost import load_cost_inputs

    inputs = load_cost_inputs(tmp_path / "out" / "cost-inputs.json")
    values = {r.key: r.value for r in result.rows}
    cpus = result.machine.cpus_available
    for size in ("12mp", "web"):
        photo = inputs.photo("efficientnet-lite0@1", size)
        assert photo.cpu_ms_per_image == round(cpus * 1000 / values[f"core.{size}.ips"], 2)
        assert photo.decode_ms == round(values[f"decode.{size}.draft.ms"], 2)
    assert inputs.photo("efficientnet-lite0@1", "12mp").width == 320


def test_int8_and_short_run_sections_add_their_rows_and_target(tmp_path: Path) -> None:
    from imgpipe.bench.int8 import section_int8, section_short_runs

    result = run_benchmark(
        tmp_path / "out", quick=True, images=2, big_size=(320, 240), web_size=(160, 120),
        report_path=tmp_path / "REPORT.md", sections=[section_int8, section_short_runs],
    )
    keys = [r.key for r in result.rows]
    assert keys[:2] == ["int8.model.b16.ips", "int8.core.12mp.ips"]
    for key in ("int8.core.web.ips", "int8.bound.web.ips", "int8.cold_start.s",
                "int8.rss.b16.mib", "int8.model.mib", "short.12mp.3.first_s",
                "short.web.16.ips"):
        assert key in keys
    assert all(r.value > 0 for r in result.rows)
    (target,) = result.targets
    assert target.name.startswith("core with int8 >= 1.6x") and target.measured > 0


def test_a_run_of_some_sections_leaves_the_cost_inputs_alone(tmp_path: Path) -> None:
    """bench/cost-inputs.json holds a full run's core figures: a run of other sections only
    (no core rows) must not replace it with an empty one."""
    from imgpipe.bench.run import default_bench_dir

    committed = default_bench_dir() / "cost-inputs.json"
    before = committed.read_bytes()

    def only(ctx: BenchContext) -> list[Row]:
        return [Row("only.ips", "a section of its own", 1.0, "img/s")]

    result = run_benchmark(tmp_path / "out", images=2, big_size=(320, 240),
                           web_size=(160, 120), report_path=tmp_path / "REPORT.md",
                           sections=[only], repeats=1)
    assert [r.key for r in result.rows] == ["only.ips"]
    assert committed.read_bytes() == before


def test_a_quick_run_says_its_numbers_are_not_meaningful_and_judges_nothing() -> None:
    """`imgpipe bench --quick` printed four FAIL lines and no word about quick numbers
    (run_benchmark marks a quick run's targets `judged=False`, as the test above checks)."""
    from imgpipe.bench.context import Target
    from imgpipe.commands.bench import verdict_lines

    slow = Target("cold start <= 0.5 s", 2.0, 0.5, "s", False, "how")
    quick = verdict_lines([dataclasses.replace(slow, judged=False)], quick=True)
    assert not any("FAIL" in line or "PASS" in line for line in quick)
    assert quick[0] == "not judged (quick)  cold start <= 0.5 s"
    assert "not meaningful" in quick[-1] and "imgpipe bench" in quick[-1]
    assert verdict_lines([slow], quick=False) == ["FAIL  cold start <= 0.5 s"]
