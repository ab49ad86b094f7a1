"""Billed duration under AWS-like latency: what Lambda bills for each photo, next to the
CPU time the core spends on it (issue 21).

Lambda bills a function's duration, not its CPU time: every millisecond it waits for S3 or
DynamoDB without decoding or inferring meanwhile is paid for. On loopback those requests
take a millisecond, so the other rows cannot show it. This section runs the embedded stack
with the emulator's latency table switched between `none` (loopback) and `aws`
(`imgpipe/local/latency_aws.json`: documented figures, by operation) in alternating rounds
on the same photos, and sums the ingest and backfill functions' invocation durations
(Lambda's Duration, the cold start's init left out, each rounded up to the millisecond as
Lambda bills it) per photo.

The function measured has one worker on a CPU of its own (`FunctionPool.resize`): the
emulator, the poller and this process are moved to the other CPUs for the rounds, so the
worker's duration is its own work and its own waiting, as on a 1-vCPU Lambda (1,769 MB),
not time the emulator took from it. (On a 1-CPU machine everything shares the CPU; the
rows say so.) Its reference is the core's CPU time per photo (`classify_many` from memory,
`time.process_time`) on the same photos, measured in this process before the rounds, and
the function worker's own CPU time per photo (its /proc counters over the round).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from imgpipe.bench.context import BenchContext, Row

__all__ = ["section_billed_duration", "LATENCY_SECTIONS", "ROUTES", "billed_ms"]

ROUTES = ("ingest", "backfill")
PROFILES = ("none", "aws")
INGEST_PHOTOS = 64  # 4 full batches of 16: no partial batch waiting out the window
BACKFILL_PHOTOS = 128  # 2 batches of 64
ROUNDS = 2  # none, aws, none, aws


@dataclass(frozen=True)
class Round:
    route: str
    profile: str
    photos: int
    invocations: int
    billed_ms: float  # per photo, at the worker's CPUs (1 when it has a CPU of its own)
    function_cpu_ms: float  # the worker process's CPU time per photo
    wall_s: float
    delayed_requests: int = 0  # answers the emulator held back during the round
    delayed_s: float = 0.0  # and for how long in all


def billed_ms(duration_s: float, init_s: float | None = None) -> int:
    """Lambda's Billed Duration of one invocation: its duration without the init, rounded
    up to the millisecond."""
    return max(1, math.ceil(1000 * (duration_s - (init_s or 0.0)) - 1e-9))


def section_billed_duration(ctx: BenchContext) -> list[Row]:
    from imgpipe.bench.stack import _drain, _upload
    from imgpipe.local.latency import set_latency
    from imgpipe.local.stack import LocalStack, StackOptions, free_port

    rows: list[Row] = []
    # A quick run's single photo would wait out the template's 5 s batching window.
    options = StackOptions(port=free_port(), log_level="ERROR",
                           batching_window_s=0 if ctx.quick else None)
    with LocalStack(options) as stack:
        r = stack.resources
        assert r is not None
        s3 = stack.client("s3")
        _drain(stack.client("sqs"), r.queue_url)  # the stack's s3:TestEvent
        own_cpu = _confine(stack, [r.ingest_function, r.backfill_function])
        functions = {"ingest": r.ingest_function, "backfill": r.backfill_function}
        for name, image_set in ctx.sets.items():
            datas = [p.read_bytes() for p in image_set.paths]
            ingest = _enough(datas, 1 if ctx.quick else INGEST_PHOTOS)
            backfill = _enough(datas, 1 if ctx.quick else BACKFILL_PHOTOS)
            ctx.progress(f"billed duration, {name}: the core's CPU time on the same photos")
            core_cpu_ms = _core_cpu_ms(ctx, backfill)
            ctx.values[f"latency.core.{name}.cpu_ms"] = core_cpu_ms

            def ingest_round(profile: str, tag: str, photos: Sequence[bytes] = ingest,
                             name: str = name) -> Round:
                keys = [f"{r.input_prefix}bench-latency/{name}/{tag}/{i}.jpg"
                        for i in range(len(photos))]
                return _measure(stack, functions["ingest"], "ingest", profile, len(keys),
                                lambda: _ingest(stack, s3, keys, photos, ctx))

            def backfill_round(profile: str, tag: str, photos: Sequence[bytes] = backfill,
                               name: str = name) -> Round:
                prefix = f"bench-latency-backfill/{name}/{tag}/"
                keys = [f"{prefix}{i}.jpg" for i in range(len(photos))]
                set_latency(stack.endpoint_url, "none")  # the photos arrive before the clock
                _upload(s3, r.bucket, zip(keys, photos, strict=True))
                set_latency(stack.endpoint_url, profile)
                return _measure(stack, functions["backfill"], "backfill", profile, len(keys),
                                lambda: _backfill(stack, prefix, len(keys)))

            if name == next(iter(ctx.sets)):  # warm workers: their init is not a photo's
                ctx.progress(f"billed duration, {name}: warm-up, no latency")
                ingest_round("none", "warm", ingest[:1])
                backfill_round("none", "warm", backfill[:1])
            rounds: list[Round] = []
            with own_cpu():
                for i in range(1 if ctx.quick else ROUNDS):
                    for profile in PROFILES:
                        ctx.progress(f"billed duration, {name}: round {i + 1}, latency "
                                     f"{profile}: ingest of {len(ingest)} photos, backfill "
                                     f"of {len(backfill)}")
                        set_latency(stack.endpoint_url, profile)
                        rounds.append(ingest_round(profile, f"{profile}-{i}"))
                        rounds.append(backfill_round(profile, f"{profile}-{i}"))
                set_latency(stack.endpoint_url, "none")
            ctx.details[f"billed.{name}.rounds"] = rounds
            rows += _rows(ctx, name, rounds, core_cpu_ms, own_cpu.cpus)
    return rows


def _core_cpu_ms(ctx: BenchContext, photos: Sequence[bytes]) -> float:
    """The core's CPU time per photo: `classify_many` from memory (the core row's method),
    its session made before the clock starts; this process's CPU time (every thread)."""
    from pipeline.classifier import Classifier

    def loader(data: bytes) -> Callable[[], bytes]:
        return lambda: data

    with Classifier(ctx.manifest) as clf:
        started = time.process_time()
        results = list(clf.classify_many((i, loader(d)) for i, d in enumerate(photos)))
        return 1000 * (time.process_time() - started) / len(results)


def _enough(datas: Sequence[bytes], count: int) -> list[bytes]:
    return [datas[i % len(datas)] for i in range(max(count, len(datas) if count > 1 else 1))]


def _rows(ctx: BenchContext, name: str, rounds: Sequence[Round], core_cpu_ms: float,
          own: bool) -> list[Row]:
    med = statistics.median
    where = ("one worker on a CPU of its own" if own else
             "one worker sharing the only CPU with the emulator")
    rows = [Row(f"latency.core.{name}.cpu_ms", f"the core's CPU time per photo "
                f"(classify_many from memory, process time), {name}", core_cpu_ms, "ms/img",
                "the reference of the billed durations below", section=f"billed-{name}")]
    for route in ROUTES:
        by = {p: [x for x in rounds if x.route == route and x.profile == p] for p in PROFILES}
        none, aws = (med(x.billed_ms for x in by[p]) for p in PROFILES)
        cpu = {p: med(x.function_cpu_ms for x in by[p]) for p in PROFILES}
        key = f"billed.{name}.{route}"
        ctx.values.update({f"{key}.none.ms": none, f"{key}.aws.ms": aws,
                           f"billed_vs_cpu.{name}.{route}": aws / core_cpu_ms,
                           f"{key}.function_cpu.ms": cpu["aws"]})
        rounds_text = ", ".join(f"{x.billed_ms:.1f}" for x in by["aws"])
        rows += [
            Row(f"{key}.none.ms", f"{route} function, billed duration per photo, no latency "
                f"(loopback), {name} ({where})", none, "ms/img",
                f"the function's own CPU {cpu['none']:.1f} ms/img",
                f"{none / core_cpu_ms:.2f}x the core's CPU time", section=f"billed-{name}"),
            Row(f"{key}.aws.ms", f"{route} function, billed duration per photo, AWS-like "
                f"latency (latency_aws.json), {name} (rounds: {rounds_text} ms)", aws,
                "ms/img", f"no latency {none:.1f} ms/img; the function's own CPU "
                f"{cpu['aws']:.1f} ms/img; the core's CPU {core_cpu_ms:.1f} ms/img",
                f"{aws / core_cpu_ms:.2f}x the core's CPU time; latency adds "
                f"{aws - none:+.1f} ms/img", section=f"billed-{name}"),
        ]
    return rows


def _measure(stack: Any, function: str, route: str, profile: str, photos: int,
             run: Callable[[], None]) -> Round:
    """Run one round; the function's invocations that started during it, billed."""
    from imgpipe.local.latency import latency_status

    seen = {i.request_id for i in stack.invocations}
    pool = stack.pools[function]
    cpu_before = _workers_cpu(pool)
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    cpu = sum(s - cpu_before.get(pid, 0.0) for pid, s in _workers_cpu(pool).items())
    mine = [i for i in stack.invocations if i.request_id not in seen and i.function == function]
    billed = sum(billed_ms(i.duration_s, i.init_s) * max(1, i.cpus) for i in mine)
    delayed = latency_status(stack.endpoint_url)["delayed"].values()
    return Round(route, profile, photos, len(mine), billed / photos, 1000 * cpu / photos, wall,
                 sum(d["requests"] for d in delayed), sum(d["seconds"] for d in delayed))


def _ingest(stack: Any, s3: Any, keys: Sequence[str], photos: Sequence[bytes],
            ctx: BenchContext) -> None:
    from imgpipe.bench.stack import _drain, _upload

    r = stack.resources
    _upload(s3, r.bucket, zip(keys, photos, strict=True))
    stack.wait_for_items([f"s3://{r.bucket}/{k}" for k in keys], ctx.manifest.model_id,
                         timeout_s=600)
    _drain(stack.client("sqs"), r.queue_url, timeout_s=600)  # every invocation returned


def _backfill(stack: Any, prefix: str, photos: int) -> None:
    from imgpipe.bench.stack import _backfill as run_backfill

    r = stack.resources
    _, summary = run_backfill(stack.client("stepfunctions"), r.state_machine_arn, r.bucket,
                              prefix)
    classified = int(summary["counts"]["classified"])
    if classified != photos:
        raise RuntimeError(f"backfill classified {classified} of {photos}: {summary}")


def _workers_cpu(pool: Any) -> dict[int, float]:
    """CPU seconds so far of the pool's worker processes, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for w in pool.workers:
        if w.proc is None:
            continue
        try:
            with open(f"/proc/{w.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[w.proc.pid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            continue
    return out


class _OwnCpu:
    """Context manager moving this process and the emulator (every thread) to all CPUs but
    the measured workers' one, and back. `cpus`: whether the worker has a CPU of its own."""

    def __init__(self, pids: Sequence[int], rest: set[int], everything: set[int]) -> None:
        self.pids = pids
        self.rest = rest
        self.everything = everything
        self.cpus = bool(rest)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self.cpus:
            yield
            return
        _pin(self.pids, self.rest)
        try:
            yield
        finally:
            _pin(self.pids, self.everything)


def _confine(stack: Any, functions: Sequence[str]) -> _OwnCpu:
    """One worker for each measured function, pinned to the first CPU; the rest of the
    stack is moved to the other CPUs during the rounds (`_OwnCpu`)."""
    try:
        everything = set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: nothing is pinned
        everything = set()
    first = min(everything) if everything else 0
    for function in functions:
        stack.pools[function].resize(1, [first] if len(everything) > 1 else None)
    pids = [os.getpid()] + ([stack._emulator.pid] if stack._emulator is not None else [])
    return _OwnCpu(pids, everything - {first}, everything)


def _pin(pids: Sequence[int], cpus: set[int]) -> None:
    for pid in pids:
        try:
            tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            tasks = [pid]
        for tid in tasks:
            with contextlib.suppress(OSError):  # a thread that has just ended
                os.sched_setaffinity(tid, cpus)


LATENCY_SECTIONS: Sequence[Any] = (section_billed_duration,)
