"""`imgpipe bench`: measure throughput, cold start and memory; write bench/REPORT.md."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

HELP = "measure throughput, cold start and memory on this machine; write bench/REPORT.md"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help=HELP,
        description=HELP + ". Generates 12-megapixel and web-size JPEGs (cached), measures "
        "the model limit, decode, the core end to end, a naive handler, cold start and peak "
        "RSS in one run, and prints PASS/FAIL per target. Exit 0 unless it crashed: a "
        "benchmark reports, it does not gate.",
    )
    p.add_argument("--quick", action="store_true",
                   help="few images and one repeat: a smoke test, not a measurement")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="generated images and results.json (default: bench/out)")
    p.add_argument("--report", default=None, metavar="FILE",
                   help="the markdown report (default: bench/REPORT.md)")
    p.add_argument("--images", type=int, default=None, metavar="N",
                   help="images per set (default 32 x 12 MP and 64 web-size; --quick: 4)")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="timed repeats per measurement, median reported (default 5)")
    p.add_argument("--no-stack", action="store_true",
                   help="skip the rows measured on the embedded stack (local ingest and "
                   "backfill, billed duration under AWS-like latency; they need the [local] "
                   "extras)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from imgpipe.bench import render_table, render_targets, run_benchmark

    if (args.images is not None and args.images < 1) or (
        args.repeats is not None and args.repeats < 1
    ):
        print("imgpipe bench: --images and --repeats must be at least 1", file=sys.stderr)
        return 2
    started = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    from imgpipe.bench.int8 import INT8_SECTIONS

    extra: list[Any] = list(INT8_SECTIONS)
    if not args.no_stack:
        from imgpipe.bench.latency import LATENCY_SECTIONS
        from imgpipe.bench.stack import STACK_SECTIONS
        from imgpipe.bench.window import WINDOW_SECTIONS

        extra += [*STACK_SECTIONS, *WINDOW_SECTIONS, *LATENCY_SECTIONS]
    result = run_benchmark(args.out, quick=args.quick, images=args.images,
                           report_path=args.report, repeats=args.repeats, progress=progress,
                           extra_sections=extra)
    print()
    print(render_table(result.rows))
    print()
    print(render_targets(result.targets))
    print()
    print("\n".join(verdict_lines(result.targets, args.quick)))
    print(f"\nreport: {result.report_path}\nresults: {result.results_path}")
    return 0


QUICK_NOTE = ("quick run: a smoke test of the harness (a few images, one round each); its "
              "numbers are not meaningful, so the targets are not judged. Run `imgpipe bench` "
              "(or `make bench`) on an idle machine to judge them.")


def verdict_lines(targets: Sequence[Any], quick: bool) -> list[str]:
    """One line per target, and in a quick run the sentence that says why none is judged."""
    lines = [f"{t.verdict}  {t.name}" for t in targets]
    return [*lines, "", QUICK_NOTE] if quick else lines
