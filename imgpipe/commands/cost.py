"""`imgpipe cost`: what a million images cost on AWS, line by line, and next to what."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

HELP = ("estimate the AWS bill per million images from measured billed duration (or CPU "
        "time) and dated prices")

MODES = ("per-image", "batch", "none")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cost", help=HELP,
        description=HELP + ". The per-image CPU time comes from `imgpipe bench` "
        "(bench/cost-inputs.json; a fresh clone has the committed run's figures), and so "
        "does the billed duration under AWS-like latency when the run measured it (the time "
        "a function waits for S3 and DynamoDB is billed too); the "
        "prices, each with its source, and the date they were listed on, from "
        "imgpipe/cost/prices.json. Prints one scenario's bill (which line dominates), a "
        "table over photo sizes, architectures, memory sizes and output-document modes, "
        "the comparison with an always-on instance and a managed label-detection API, and "
        "the assumptions.",
    )
    p.add_argument("--images", type=int, default=1_000_000, metavar="N",
                   help="images in the bill (default 1,000,000)")
    p.add_argument("--photo", default="12mp", metavar="SIZE",
                   help="photo size of the detailed bill: 12mp or web, as benchmarked "
                   "(default 12mp)")
    p.add_argument("--memory", type=int, default=2048, metavar="MB",
                   help="function memory of the detailed bill (default 2048, the template's)")
    p.add_argument("--memories", default="1024,2048,4096", metavar="MB,MB",
                   help="memory sizes of the table (default 1024,2048,4096)")
    p.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64",
                   help="architecture of the detailed bill (default x86_64)")
    p.add_argument("--output-documents", choices=MODES, default="per-image",
                   help="IMGPIPE_OUTPUT_DOCUMENTS of the detailed bill (default per-image)")
    p.add_argument("--route", choices=("ingest", "backfill"), default="ingest",
                   help="photos arriving through SQS (ingest) or a backfill (Step Functions)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="SQS messages per ingest invocation (template BatchSize, default 16)")
    p.add_argument("--cpu-ms", type=float, default=None, metavar="MS",
                   help="CPU time per image instead of the benchmark's (e.g. your own photos)")
    p.add_argument("--wait-ms", type=float, default=None, metavar="MS",
                   help="billed time per image beyond the CPU time (waiting for S3 and "
                   "DynamoDB) instead of the benchmark's billed-duration rows; 0 prices CPU "
                   "time alone")
    p.add_argument("--per-month", type=int, default=1_000_000, metavar="N",
                   help="images a month, for the always-on instance (default 1,000,000)")
    p.add_argument("--price", action="append", default=[], metavar="NAME=USD",
                   help="replace one price (USD per unit; names in the prices file), "
                   "e.g. --price lambda_gb_s_arm64=0.0000133334; repeatable")
    p.add_argument("--prices", type=Path, default=None, metavar="FILE",
                   help="a prices file of your own (format: imgpipe/cost/prices.json)")
    p.add_argument("--inputs", type=Path, default=None, metavar="FILE",
                   help="benchmark figures (default bench/cost-inputs.json)")
    p.add_argument("--model", default="efficientnet-lite0@1", metavar="NAME@VERSION",
                   help="whose benchmark figures (default efficientnet-lite0@1)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from imgpipe.cost import Scenario, bill_for, load_cost_inputs, load_prices
    from imgpipe.cost.model import as_dict, cpu_time_compute, instance_comparison

    try:
        overrides = {k: float(v) for k, v in (item.split("=", 1) for item in args.price)}
        memories = [int(m) for m in args.memories.split(",") if m.strip()]
    except ValueError:
        print("imgpipe cost: --price takes NAME=USD (a number) and --memories MB,MB,...",
              file=sys.stderr)
        return 2
    if args.images < 1 or args.batch_size < 1 or (args.cpu_ms is not None
                                                  and args.cpu_ms <= 0):
        print("imgpipe cost: --images, --batch-size and --cpu-ms must be positive",
              file=sys.stderr)
        return 2
    if args.wait_ms is not None and args.wait_ms < 0:
        print("imgpipe cost: --wait-ms must be 0 or more", file=sys.stderr)
        return 2
    prices = load_prices(args.prices).with_overrides(overrides)
    inputs = load_cost_inputs(args.inputs)
    sizes = list(inputs.models.get(args.model, {}))
    base = Scenario(photo=inputs.photo(args.model, args.photo), arch=args.arch,
                    memory_mb=args.memory, images=args.images, batch_size=args.batch_size,
                    output_documents=args.output_documents, route=args.route,
                    cpu_ms_per_image=args.cpu_ms, wait_ms_per_image=args.wait_ms)
    bill = bill_for(base, prices)
    cpu_gb_s, cpu_usd = cpu_time_compute(base, prices)
    table = []
    for size in sizes:
        for arch in ("x86_64", "arm64"):
            for mem in memories:
                row = dataclasses.replace(base, photo=inputs.photo(args.model, size),
                                          arch=arch, memory_mb=mem)
                table.append((size, arch, mem, row.batch_seconds, {
                    mode: bill_for(dataclasses.replace(row, output_documents=mode),
                                   prices).total for mode in MODES}))
    instance = instance_comparison(base, prices, args.per_month)
    api = args.images * prices["managed_labels_image"]
    data_lines = sum(line.usd for line in bill.lines
                     if line.name.startswith(("DynamoDB", "S3")))
    assumptions = _assumptions(args, base, inputs, instance)
    if args.json:
        print(json.dumps({
            "images": args.images, "scenario": _scenario_doc(base), "bill": as_dict(bill),
            "cpu_time_compute": {"gb_s": round(cpu_gb_s, 3), "usd": round(cpu_usd, 4)},
            "table": [{"photo": s, "arch": a, "memory_mb": m, "batch_seconds": round(b, 3),
                       "total_usd": {k: round(v, 4) for k, v in t.items()}}
                      for s, a, m, b, t in table],
            "instance": dataclasses.asdict(instance), "managed_api_usd": api,
            "prices": {"as_listed_on": prices.as_listed_on, "region": prices.region,
                       "source": prices.source, "usd": dict(prices.usd),
                       "origin": dict(prices.origin)},
            "assumptions": assumptions}, indent=2))
        return 0
    _print_text(args, base, bill, table, instance, api, data_lines, prices, assumptions,
                (cpu_gb_s, cpu_usd))
    return 0


def _assumptions(args: argparse.Namespace, base: Any, inputs: Any, instance: Any
                 ) -> list[str]:
    from imgpipe.cost.model import MB_PER_VCPU

    return [
        f"CPU time per image: {base.cpu_ms:.1f} ms ("
        + ("yours, --cpu-ms" if args.cpu_ms else f"{base.photo.name} photos, "
           f"{base.photo.width}x{base.photo.height} ~{base.photo.mean_bytes / 1e6:.2f} MB: "
           f"the core's CPUs x 1000 / images/s on {inputs.machine}, {inputs.date}, "
           f"{inputs.source}") + ")",
        _billed_assumption(base, args.wait_ms),
        f"Lambda CPU grows with memory: {MB_PER_VCPU} MB = 1 vCPU (at most 6), and this "
        "pipeline uses it all (linear beyond the benchmark's CPUs: unmeasured), so the cost "
        "of the CPU time hardly depends on memory (the waiting's grows with it); memory "
        "buys speed per invocation",
        "arm64 takes the same CPU time per image as the x86_64 machine measured (unmeasured)",
        "every image is classified (records under 1 KB: one write unit for the table, one "
        "for the index); one strongly consistent read each, two with per-image documents (the "
        "record check after the document); S3 requests and SQS messages "
        "under 64 KB; no cold starts, retries or idle polling counted; the uploads "
        "themselves, storage and data transfer are not in the bill",
        f"the always-on instance: 2 vCPUs at the same CPU time per image "
        f"({instance.images_per_s:.1f} images/s at full CPU), busy at most half the time, "
        f"running all month for {args.per_month:,} images a month",
    ]


def _scenario_doc(s: Any) -> dict[str, Any]:
    return {"photo": s.photo.name, "arch": s.arch, "memory_mb": s.memory_mb,
            "output_documents": s.output_documents, "route": s.route,
            "batch_size": s.batch_size, "cpu_ms_per_image": s.cpu_ms,
            "wait_ms_per_image": s.wait_ms, "billed_ms_per_image": round(s.billed_ms, 3)}


def _billed_assumption(s: Any, wait_ms: float | None) -> str:
    """How the billed duration was reached: measured, given, or CPU time alone."""
    cpu = (f"the CPU time over {s.vcpus:.2f} vCPU ({s.cpu_ms:.1f} / {s.vcpus:.2f} = "
           f"{s.cpu_ms / s.vcpus:.1f} ms)")
    if wait_ms is not None:
        return (f"billed duration per image: {s.billed_ms:.1f} ms = {cpu} + {wait_ms:.1f} ms "
                "of waiting (yours, --wait-ms)")
    measured = s.photo.billed.get(s.route)
    if measured is None:
        return (f"billed duration per image: {s.billed_ms:.1f} ms = {cpu} alone. The "
                "benchmark figures have no billed-duration rows for this photo size and "
                "route (`imgpipe bench` with the stack measures them), so the time the "
                "function waits for S3 and DynamoDB is not counted: the bill is low by that "
                "much (issue 21 measured ~15 % of billed time on 12 MP photos by hand); "
                "--wait-ms adds your own figure")
    source = (f", measured with {s.photo.billed_from} (the requests are per photo, not per "
              "network; a slower model hides more of their waiting)"
              if s.photo.billed_from else "")
    return (f"billed duration per image: {s.billed_ms:.1f} ms = {cpu} + {measured.wait_ms:.1f}"
            f" ms of requests (the SDK's CPU and the waiting for S3 and DynamoDB): the "
            f"{s.route} function's billed duration under AWS-like latency on the local stack "
            f"({measured.aws_ms:.1f} ms at 1 vCPU; {measured.none_ms:.1f} ms without latency) "
            f"less the core's CPU time in the same run ({measured.cpu_ms:.1f} ms){source}; "
            "more memory is taken not to shorten it")


def _money(usd: float) -> str:
    return f"{usd:,.2f}" if usd >= 0.995 or usd == 0 else f"{usd:.3f}"


def _print_text(args: argparse.Namespace, s: Any, bill: Any, table: list[Any], instance: Any,
                api: float, data_lines: float, prices: Any, assumptions: list[str],
                cpu_time: tuple[float, float]) -> None:
    route = (f"ingest (S3 -> SQS -> Lambda, batches of {s.batch_size})" if s.route == "ingest"
             else f"backfill (Step Functions, batches of {s.backfill_batch})")
    print(f"{args.images:,} images: {s.photo.name} photos, {s.arch} at {s.memory_mb} MB, "
          f"output documents {s.output_documents}, {route}")
    print(f"prices: {prices.region}, as listed on {prices.as_listed_on} ({prices.source}); "
          "not re-checked online")
    print()
    print(f"  {'LINE':46} {'QUANTITY':>22} {'USD':>10} {'SHARE':>6}")
    dominant = bill.dominant
    for line in bill.lines:
        qty = f"{line.quantity:,.0f} {line.unit}" if line.quantity >= 100 else \
            f"{line.quantity:,.3f} {line.unit}"
        print(f"  {line.name:46} {qty:>22} {_money(line.usd):>10} "
              f"{bill.share(line):6.0%}" + ("  <- largest" if line is dominant else ""))
    print(f"  {'total':46} {'':>22} {_money(bill.total):>10}")
    compute = next(line for line in bill.lines if line.name.startswith("Lambda compute"))
    if s.wait_ms is None:
        print(f"  Lambda bills duration; priced here at CPU time ({s.billed_ms:.1f} ms an "
              "image): no billed-duration rows measured the waiting (see the assumptions).")
    else:
        print(f"  Lambda bills duration: {s.billed_ms:.1f} ms an image (CPU time "
              f"{s.cpu_ms / s.vcpus:.1f} ms + requests {s.wait_ms:.1f} ms: their CPU and "
              f"waiting). CPU time alone would be {cpu_time[0]:,.0f} GB-s, "
              f"${_money(cpu_time[1])}; the requests add ${_money(compute.usd - cpu_time[1])}.")
    print()
    modes = list(table[0][4]) if table else []
    print(f"USD per {args.images:,} images by output documents (memory buys time per batch "
          f"of {s.batch_size}, not savings):")
    print(f"  {'PHOTOS':8} {'ARCH':7} {'MEMORY':>8} {'BATCH':>7}"
          + "".join(f" {m:>10}" for m in modes))
    for size, arch, mem, secs, totals in table:
        print(f"  {size:8} {arch:7} {mem:>5} MB {secs:>6.2f}s"
              + "".join(f" {_money(totals[m]):>10}" for m in modes))
    print()
    per_m = args.images / 1e6
    print("compared with:")
    print(f"  always-on instance ({instance.instances} x 2 vCPU, {s.arch}): "
          f"${_money(instance.monthly_usd)} a month, ${_money(instance.per_million_usd)} per "
          f"million images at {args.per_month:,} a month, plus the same S3 and DynamoDB "
          f"lines (${_money(data_lines / per_m)} per million)")
    print(f"  managed label-detection API: ${_money(api)} for {args.images:,} images "
          f"({prices.quoted['managed_labels_image']})")
    print()
    print("assumptions:")
    for text in assumptions:
        print(f"  - {text}")
    recalled = sorted(k for k, v in prices.origin.items() if v == "recalled")
    if recalled:
        print(f"  - prices written from memory, check them first: {', '.join(recalled)}")
