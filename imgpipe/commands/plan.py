"""`imgpipe plan`: the concurrency, invocations, bill and quotas of a run of N images."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

HELP = "plan a large run: the concurrency a deadline needs, the bill, the quotas that bind"
INT8 = "efficientnet-lite0-int8@1"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help=HELP,
        description=HELP + ". Given a number of images, their kind and a deadline (--in) or "
        "a concurrency, prints the concurrency needed, the invocations, the bill for each "
        "architecture and output-document mode (from `imgpipe cost`'s figures and prices), "
        "and each AWS quota the run meets with its default, whether it binds and what to "
        "raise (imgpipe/cost/quotas.py, each with the page that states it).",
    )
    p.add_argument("--images", type=int, default=1_000_000, metavar="N",
                   help="images in the run (default 1,000,000)")
    p.add_argument("--photo", default="12mp", metavar="SIZE",
                   help="12mp or web, as benchmarked (default 12mp)")
    p.add_argument("--cpu-ms", type=float, default=None, metavar="MS",
                   help="CPU time per image, measured on your photos, instead of the "
                   "benchmark's")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--in", dest="deadline", default=None, metavar="DURATION",
                      help="finish within this long: 600s, 10m, 2h")
    when.add_argument("--concurrency", type=int, default=None, metavar="N",
                      help="functions at once; the plan says how long it takes")
    p.add_argument("--route", choices=("backfill", "ingest"), default="backfill",
                   help="a backfill (Step Functions, the default) or uploads through SQS")
    p.add_argument("--memory", type=int, default=2048, metavar="MB",
                   help="function memory (default 2048, the template's)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="images per invocation (default: BackfillBatchSize 64, BatchSize 16)")
    p.add_argument("--hot-label-share", type=float, default=None, metavar="FRACTION",
                   help="share of the photos under the commonest label (default: measured "
                   "on the sample photos, 1/6)")
    p.add_argument("--budget", type=float, default=None, metavar="USD",
                   help="say whether the cheapest configuration (batch documents, arm64) "
                   "stays under this, and what stands in the way")
    p.add_argument("--brief", action="store_true",
                   help="the summary, the bill and the quotas that bind only")
    p.add_argument("--prices", type=Path, default=None, metavar="FILE",
                   help="a prices file of your own (format: imgpipe/cost/prices.json)")
    p.add_argument("--inputs", type=Path, default=None, metavar="FILE",
                   help="benchmark figures (default bench/cost-inputs.json)")
    p.add_argument("--model", default="efficientnet-lite0@1", metavar="NAME@VERSION",
                   help="whose benchmark figures (default efficientnet-lite0@1; the int8 "
                   "model's are added when the figures have them)")
    p.set_defaults(run=run)


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|min)?\s*", text)
    if not m:
        raise ValueError(text)
    unit = {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * unit


def run(args: argparse.Namespace) -> int:
    print("\n".join(plan_lines(args)))
    return 0


def plan_lines(args: argparse.Namespace) -> list[str]:
    from imgpipe.cost import Scenario, load_cost_inputs, load_prices
    from imgpipe.cost.plan import bills, checks, make_plan
    from imgpipe.cost.quotas import LABELS_MEASURED

    try:
        deadline = parse_duration(args.deadline) if args.deadline is not None else None
    except ValueError:
        _usage(f"--in {args.deadline!r}: a duration such as 600s, 10m or 2h")
    if args.images < 1 or (args.cpu_ms is not None and args.cpu_ms <= 0) or \
            (args.batch_size is not None and args.batch_size < 1) or \
            (deadline is not None and deadline <= 0) or \
            (args.concurrency is not None and args.concurrency < 1):
        _usage("--images, --cpu-ms, --batch-size, --in and --concurrency must be positive")
    share = float(LABELS_MEASURED["hottest_share"] if args.hot_label_share is None
                  else args.hot_label_share)
    if not 0 < share <= 1:
        _usage("--hot-label-share is a fraction above 0, at most 1")
    inputs = load_cost_inputs(args.inputs)
    prices = load_prices(args.prices)
    photo = inputs.photo(args.model, args.photo)
    batch = {"backfill_batch": args.batch_size} if args.route == "backfill" else \
        {"batch_size": args.batch_size}
    s = Scenario(photo=photo, memory_mb=args.memory, images=args.images, route=args.route,
                 cpu_ms_per_image=args.cpu_ms,
                 **{k: v for k, v in batch.items() if v is not None})
    plan = make_plan(s, deadline_s=deadline, concurrency=args.concurrency)
    models = {"yours" if args.cpu_ms else "fp32": s.cpu_ms}
    int8_note = ""
    if args.cpu_ms is None:
        if args.photo in inputs.models.get(INT8, {}):
            models["int8"] = inputs.photo(INT8, args.photo).cpu_ms_per_image
        else:
            int8_note = (f"int8: {_shown(inputs.source)} has no figure for {INT8}; plan "
                         "it with --cpu-ms")
    all_bills = bills(plan, prices, models)

    route = (f"backfill (Step Functions, batches of {plan.batch})" if s.route == "backfill"
             else f"ingest (SQS, batches of {plan.batch})")
    goal = (f"in {_dur(deadline)}" if deadline is not None
            else f"at concurrency {plan.concurrency}")
    what = "your photos" if args.cpu_ms else f"{photo.name} photos"
    lines = [
        f"plan: {args.images:,} {what}, {route}, {s.memory_mb} MB, {goal}",
        f"  CPU per image {s.cpu_ms:.1f} ms ("
        + ("--cpu-ms" if args.cpu_ms else f"{args.model}, {_shown(inputs.source)}")
        + f"); {s.vcpus:.2f} vCPU" + (f" + requests {s.wait_ms:.1f} ms" if s.wait_ms else "")
        + f": {1000 * plan.batch_s / plan.batch:.1f} ms of function time an image, "
        f"{plan.batch_s:.2f} s a batch",
        f"  concurrency {plan.concurrency:,}: {plan.batches:,} invocations in {plan.waves:,} "
        f"waves, {_dur(plan.seconds)}; {plan.images_per_s:,.0f} photos/s",
        "",
        f"bill, USD ({prices.region}, prices of {prices.as_listed_on}):"
        f"{'per-image':>13}{'batch':>10}{'none':>10}",
    ]
    width = len(lines[-1]) - 33
    for model in models:
        for arch in ("x86_64", "arm64"):
            row = f"  {model}, {arch}"
            lines.append(f"{row:<{width}}" + "".join(
                f"{all_bills[(model, arch, mode)].total:>{13 if mode == 'per-image' else 10}.2f}"
                for mode in ("per-image", "batch", "none")))
    if int8_note:
        lines.append(f"  {int8_note}")
    lines += _quota_lines(checks(plan, share), args.brief, args.hot_label_share, share)
    if args.budget is not None:
        cheapest = min(models, key=lambda m: models[m])
        lines += _budget_lines(all_bills[(cheapest, "arm64", "batch")], args.budget, cheapest)
    return [line for line in lines if line] if args.brief else lines


def _quota_lines(found: list[Any], brief: bool, given_share: float | None,
                 share: float) -> list[str]:
    from imgpipe.cost.quotas import LABELS_MEASURED

    binding = [c for c in found if c.binds]
    if brief:
        lines = ["quotas that bind:" + ("" if binding else " none")]
        for c in binding:
            lines.append(f"  {c.quota.name}: needs {_num(c.needed)}, default {_num(c.limit)}")
            lines.append(f"    raise: {c.quota.to_raise}")
        return lines
    lines = ["", f"quotas ({len(binding)} bind):"]
    for c in found:
        lines.append(f"  {'BINDS' if c.binds else 'ok':5} {c.quota.name}: needs "
                     f"{_num(c.needed)}, default {_num(c.limit)} {c.quota.unit}"
                     + (f" ({c.note})" if c.note else ""))
        lines.append(f"        raise: {c.quota.to_raise}; {c.quota.source}")
    lines.append(f"  label distribution: {LABELS_MEASURED['source']}" if given_share is None
                 else f"  label distribution: yours, {100 * share:.0f} % under one label")
    return lines


def _budget_lines(bill: Any, budget: float, model: str) -> list[str]:
    """Whether the cheapest configuration is under `budget`, and if not what stands in the
    way: the largest lines besides compute, and the CPU time that would fit."""
    from imgpipe.cost.plan import budget_needs, grows_with_cpu

    rest, ms = budget_needs(bill, budget)
    verdict = "under it" if bill.total <= budget else "over it"
    lines = ["", f"budget ${budget:.2f} with batch documents, arm64, {model}: "
             f"${bill.total:.2f} = compute ${bill.total - rest:.2f} + the rest ${rest:.2f}, "
             f"{verdict}"]
    if bill.total > budget:
        top = sorted((ln for ln in bill.lines if not grows_with_cpu(ln)),
                     key=lambda ln: -ln.usd)[:3]
        lines.append("  the rest: " + ", ".join(f"{ln.name} ${ln.usd:.2f}" for ln in top))
        lines.append(f"  under ${budget:.2f} needs at most {ms:.1f} ms of CPU an image (this "
                     f"one takes {bill.scenario.cpu_ms:.1f})" if ms else
                     f"  not even with free compute: the rest alone is ${rest:.2f}")
    return lines


def _shown(source: str) -> str:
    """The figures' file relative to the checkout when it is in it (the README quotes it)."""
    from imgpipe.bench.context import SOURCE_ROOT

    try:
        return str(Path(source).resolve().relative_to(SOURCE_ROOT))
    except ValueError:
        return source


def _dur(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 or x == int(x) else f"{x:,.1f}"


def _usage(text: str) -> None:
    print(f"imgpipe plan: {text}", file=sys.stderr)
    raise SystemExit(2)
