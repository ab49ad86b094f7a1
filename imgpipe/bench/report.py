"""What a run writes: the markdown report (bench/REPORT.md), results.json (every row and
target, the machine, the raw dataclasses of each measurement) and the cost inputs
(`imgpipe cost`'s per-image CPU time).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgpipe.bench.context import BenchContext, BenchResult, ImageSet, Row, Target
from imgpipe.bench.timing import MIN_QUIET_ROUNDS, QUIET_OTHER_LOAD


def _fmt(value: float, unit: str) -> str:
    if unit in ("img/s", "MiB"):
        return f"{value:.1f} {unit}"
    if unit == "ms/img":
        return f"{value:.1f} ms/img"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:g} {unit}"



def render_table(rows: Sequence[Row]) -> str:
    """The measurements as a markdown table, one line per row."""
    lines = ["| measurement | value | reference (same run) | ratio |",
             "|---|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.label} | {_fmt(r.value, r.unit)} | {r.reference} | {r.ratio} |")
    return "\n".join(lines)


def render_targets(targets: Sequence[Target]) -> str:
    """The targets as a markdown table: measured, goal, PASS/FAIL."""
    lines = ["| target | measured | target | result |", "|---|---:|---:|---|"]
    for t in targets:
        op = ">=" if t.higher_is_better else "<="
        meas = f"{t.measured:.2f}" if t.unit == "x" else _fmt(t.measured, t.unit)
        goal = f"{op} {t.target:g}" + ("x" if t.unit == "x" else f" {t.unit}")
        if t.unit == "x" and t.target < 1:
            meas = f"{100 * t.measured:.0f} %"
            goal = f"{op} {100 * t.target:.0f} %"
        lines.append(f"| {t.name} | {meas} | {goal} | **{t.verdict}** |")
    return "\n".join(lines)


def render_report(result: BenchResult, sets: dict[str, ImageSet], ctx: BenchContext) -> str:
    """REPORT.md: the machine, the image sets, the targets with their definitions, and
    every row."""
    m = result.machine
    set_lines = "\n".join(f"- `{s.name}`: {len(s.paths)} JPEGs, {s.title}" for s in sets.values())
    target_defs = "\n".join(f"- **{t.name}**: {t.definition}." for t in result.targets)
    mode = "quick (smoke test; numbers are not meaningful)" if ctx.quick else "full"
    noise = " ".join(
        f"{name}: {ctx.details[f'rounds.{name}.used']}; other load per round "
        f"{[round(100 * r.other_load) for r in ctx.details[f'rounds.{name}']]} %."
        for name in sets if f"rounds.{name}.used" in ctx.details
    )
    return f"""# imgpipe benchmark report

Written by `imgpipe bench` ({mode} run, {result.elapsed_s:.0f} s). Every number below comes
from this one run on this machine; the target ratios pair figures measured seconds apart.
How to read it: `bench/README.md`.

## Machine

| | |
|---|---|
| CPU | {m.cpu_model} |
| CPUs used (affinity/cgroup) / online | {m.cpus_available} / {m.cpus_online} |
| RAM | {m.ram_gib} GiB |
| Python / onnxruntime / numpy / Pillow | {m.python} / {m.onnxruntime} / {m.numpy} / {m.pillow} |
| OS | {m.platform} |
| date | {m.date} |
| load average before / after (1, 5, 15 min) | {m.load_before} / {result.load_after} |

Image sets (generated: sample photos cropped, upscaled, plus gaussian noise, cached in
`bench/out/images/`):

{set_lines}

## Targets

{render_targets(result.targets)}

{target_defs}

## Measurements

Model and decode rows: medians of {ctx.repeats} repeat(s) after a warm-up (the full decode
over the first 8 images of a set). CPU bound, core and naive rows: medians over *paired
rounds*, each round timing the draft decode, the 1-thread inference, the core and the naive
handler back to back while sampling how much CPU other processes used; rounds where others
used more than {100 * QUIET_OTHER_LOAD:.0f} % of the CPUs are left out when at least
{MIN_QUIET_ROUNDS} quiet rounds remain. {noise}

{render_table(result.rows)}
"""


def results_doc(result: BenchResult, sets: dict[str, ImageSet], ctx: BenchContext) -> Any:
    """results.json: what the report shows, plus every repeat's raw figures (`details`)."""
    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return dataclasses.asdict(x)
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return {
        "machine": dataclasses.asdict(result.machine),
        "load_after": result.load_after,
        "elapsed_s": result.elapsed_s,
        "quick": ctx.quick,
        "repeats": ctx.repeats,
        "image_sets": {k: {"count": len(s.paths), "width": s.width, "height": s.height,
                           "mean_bytes": s.mean_bytes} for k, s in sets.items()},
        "rows": [dataclasses.asdict(r) for r in result.rows],
        "targets": [dict(dataclasses.asdict(t), passed=t.passed if t.judged else None)
                    for t in result.targets],
        "details": {k: plain(v) for k, v in ctx.details.items()},
    }


def write_cost_inputs(ctx: BenchContext, sets: dict[str, ImageSet], path: Path) -> None:
    """`imgpipe cost`'s figures (imgpipe/cost/inputs.py): a full run replaces the
    committed bench/cost-inputs.json, a quick one writes beside results.json. A run of
    some sections only, without the core's figures, leaves the file alone."""
    from imgpipe.cost import cost_inputs_doc

    doc = cost_inputs_doc(ctx.values, ctx.machine.cpus_available, sets,
                          ctx.manifest.model_id, ctx.machine.cpu_model,
                          time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if not doc["models"][ctx.manifest.model_id]:
        return
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

