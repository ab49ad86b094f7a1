"""The issue's targets, as PASS/FAIL lines: each a figure from `ctx.values`, the goal, and
the sentence that defines how it was measured. A target whose figure this run did not
measure (a section skipped) is left out.
"""

from __future__ import annotations

from imgpipe.bench.context import Target

TARGET_CORE_VS_BOUND = 0.90
TARGET_CORE_VS_NAIVE = 4.5
TARGET_COLD_START_S = 0.5
TARGET_PEAK_RSS_MIB = 350.0
TARGET_BACKFILL_VS_CORE = 0.70
TARGET_INGEST_VS_CORE = 0.60
TARGET_INT8_VS_FP32_WEB = 1.6
TARGET_SINGLE_PHOTO_S = 1.5
TARGET_WINDOW_COST_VS_WIDEST = 1.05
TARGET_BILLED_VS_CPU = 1.1


def targets_from(values: dict[str, float], cpus: int) -> list[Target]:
    out = []
    if "core_vs_bound.12mp" in values:
        out.append(Target(
            "core >= 90 % of the CPU bound (12 MP)",
            values["core_vs_bound.12mp"], TARGET_CORE_VS_BOUND, "x",
            True,
            f"median over paired rounds of core img/s / CPU bound, where CPU bound = {cpus} "
            "CPUs x 1000 / (draft decode ms/img: `decode_image` from bytes in memory to the "
            "normalised tensor, one thread, + inference ms/img: batch 16 on a session with 1 "
            "intra-op thread, pre-made tensor), both timed in the same round as the core",
        ))
    if "core_vs_naive.12mp" in values:
        out.append(Target(
            "core >= 4.5x the naive handler (12 MP)",
            values["core_vs_naive.12mp"], TARGET_CORE_VS_NAIVE, "x",
            True, "median over paired rounds of core img/s / naive handler img/s (first 8 "
            "files of the same set)",
        ))
    out += _stack_targets(values)
    if "int8_vs_fp32.core.web" in values:
        out.append(Target(
            "core with int8 >= 1.6x the core with fp32 (web-size)",
            values["int8_vs_fp32.core.web"], TARGET_INT8_VS_FP32_WEB, "x", True,
            "median over paired rounds of the core's images/s with efficientnet-lite0-int8 / "
            "with efficientnet-lite0 (fp32), both over the same web-size photos, back to back "
            "in alternating order",
        ))
    if "window.template.single_s" in values:
        out.append(Target(
            "one warm photo recorded <= 1.5 s (local stack, the template's window)",
            values["window.template.single_s"], TARGET_SINGLE_PHOTO_S, "s", False,
            "median of single 12 MP uploads, one at a time, workers warm: end of PutObject "
            "to its DynamoDB item (consistent GetItem every 25 ms), at the template's "
            "MaximumBatchingWindowInSeconds",
        ))
    if "window.template.r100.vs_widest" in values:
        out.append(Target(
            "cost per photo at 100 photos/s <= 1.05x the 5 s window's (the template's window)",
            values["window.template.r100.vs_widest"], TARGET_WINDOW_COST_VS_WIDEST, "x",
            False, "Lambda (each invocation's duration rounded up to the ms x memory, and "
            "the request) + SQS requests per photo, web-size photos uploaded at a steady "
            "100 a second, at the template's window / the same at a 5 s window",
        ))
    if "cold_start.s" in values:
        out.append(Target(
            "cold start <= 0.5 s", values["cold_start.s"], TARGET_COLD_START_S, "s", False,
            "median wall time from spawning `python` to the first prediction returned",
        ))
    if "rss.b16.mib" in values:
        out.append(Target(
            "peak RSS <= 350 MB at batch 16", values["rss.b16.mib"], TARGET_PEAK_RSS_MIB, "MiB",
            False, "peak resident set (VmHWM) of a fresh process that loads the model and runs "
            "the core over the 12 MP set at batch 16 (MiB, stricter than MB)",
        ))
    return out



def _stack_targets(values: dict[str, float]) -> list[Target]:
    """The local stack's: its throughput against the core, its billed duration against the
    core's CPU time."""
    out = []
    stack_targets = (
        ("stack_ingest.12mp.vs_core", "ingest", TARGET_INGEST_VS_CORE,
         "photos / seconds from the end of the upload to the last DynamoDB item on the local "
         "stack (S3 notification, SQS, the poller, the ingest function's Runtime API "
         "workers), template defaults, workers warm from a first upload (that upload's cold "
         "start has its own row) / the core's images/s on the same photos (its session "
         "made before the clock starts), measured right before and after and averaged"),
        ("stack_backfill.12mp.vs_core", "backfill", TARGET_BACKFILL_VS_CORE,
         "median over paired rounds of backfill images/s on the local stack "
         "(StartExecution to SUCCEEDED, the emulator sharing the CPUs) / the core's "
         "images/s (classify_many from memory) on the same photos, measured right before "
         "and right after each backfill and averaged"),
    )
    for key, what, target, how in stack_targets:
        if key in values:
            out.append(Target(f"{what} >= {100 * target:.0f} % of the core (12 MP, local "
                              f"stack)", values[key], target, "x", True, how))
    for route in ("ingest", "backfill"):
        key = f"billed_vs_cpu.12mp.{route}"
        if key in values:
            out.append(Target(
                f"{route} billed duration under AWS-like latency <= 1.1x the CPU time "
                "(12 MP)", values[key], TARGET_BILLED_VS_CPU, "x", False,
                f"median over alternating rounds of the {route} function's billed duration "
                "per photo (the sum of its invocations' durations, init left out, each "
                "rounded up to the millisecond) on the local stack with the emulator's "
                "latency_aws.json table, one worker on a CPU of its own / the core's CPU "
                "time per photo (classify_many from memory, process time) on the same "
                "photos"))
    return out
