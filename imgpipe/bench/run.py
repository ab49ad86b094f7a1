"""`run_benchmark`: one run from the image sets to the written report.

It describes the machine, generates (or finds cached) the image sets, runs every section in
order with one `BenchContext`, evaluates the targets and writes REPORT.md, results.json and
the cost inputs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgpipe.bench.context import (
    SOURCE_ROOT,
    BenchContext,
    BenchResult,
    Progress,
    Row,
    Section,
    describe_machine,
    loadavg,
)
from imgpipe.bench.images import (
    BIG_NOISE_SIGMA,
    BIG_QUALITY,
    BIG_SIZE,
    WEB_NOISE_SIGMA,
    WEB_QUALITY,
    WEB_SIZE,
    generate_images,
)
from imgpipe.bench.report import render_report, results_doc, write_cost_inputs
from imgpipe.bench.sections import SECTIONS
from imgpipe.bench.targets import targets_from


def default_bench_dir() -> Path:
    """`bench/` of the checkout when running from one, else `./bench`."""
    beside = SOURCE_ROOT / "bench"
    return beside if beside.is_dir() else Path.cwd() / "bench"


def run_benchmark(
    out_dir: str | Path | None = None,
    quick: bool = False,
    images: int | None = None,
    *,
    report_path: str | Path | None = None,
    extra_sections: Sequence[Section] = (),
    sections: Sequence[Section] | None = None,
    big_size: tuple[int, int] = BIG_SIZE,
    web_size: tuple[int, int] = WEB_SIZE,
    repeats: int | None = None,
    manifest: Any = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Generate the image sets (cached), run every section, write REPORT.md and results.json.

    `out_dir` (default `bench/out/`) holds the generated images and `results.json`;
    the report goes to `report_path` (default `bench/REPORT.md`).
    """
    from pipeline.modelstore import resolve_model

    started = time.perf_counter()
    say: Progress = progress or (lambda _msg: None)
    bench_dir = default_bench_dir()
    out = Path(out_dir) if out_dir is not None else bench_dir / "out"
    report = Path(report_path) if report_path is not None else bench_dir / "REPORT.md"
    out.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    n_big = images or (4 if quick else 32)
    n_web = images or (4 if quick else 64)
    reps = repeats or (1 if quick else 5)

    machine = describe_machine()
    say(f"machine: {machine.cpu_model}, {machine.cpus_available} CPU(s), "
        f"load {machine.load_before[0]}")
    say(f"images: {n_big} x {big_size[0]}x{big_size[1]} and {n_web} x "
        f"{web_size[0]}x{web_size[1]} in {out / 'images'} (cached)")
    sets = {
        "12mp": generate_images(out / "images", "12mp", n_big, big_size, BIG_NOISE_SIGMA,
                                BIG_QUALITY, say),
        "web": generate_images(out / "images", "web", n_web, web_size, WEB_NOISE_SIGMA,
                               WEB_QUALITY, say),
    }
    ctx = BenchContext(
        manifest=manifest or resolve_model(), sets=sets, machine=machine, quick=quick,
        repeats=reps, progress=say,
    )
    ctx.details["out_dir"] = str(out)
    rows: list[Row] = []
    for section in [*(sections if sections is not None else SECTIONS), *extra_sections]:
        for row in section(ctx):
            ctx.values.setdefault(row.key, row.value)
            rows.append(row)
    targets = [dataclasses.replace(t, judged=not quick)
               for t in targets_from(ctx.values, machine.cpus_available)]
    elapsed = time.perf_counter() - started
    result = BenchResult(machine, tuple(rows), tuple(targets), report, out / "results.json",
                         elapsed, loadavg())
    report.write_text(render_report(result, sets, ctx), encoding="utf-8")
    result.results_path.write_text(json.dumps(results_doc(result, sets, ctx), indent=2,
                                              default=str) + "\n", encoding="utf-8")
    write_cost_inputs(ctx, sets, bench_dir / "cost-inputs.json" if not quick
                      else out / "cost-inputs.json")
    return result

