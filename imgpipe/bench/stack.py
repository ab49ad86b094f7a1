"""Benchmark sections that run on the embedded stack (`imgpipe local`), next to the core.

- *local ingest*: photos uploaded to the input prefix the way `aws s3 cp` does (PutObject
  over HTTP to the emulator), timed from the end of the upload to the last DynamoDB item;
- *local backfill*: photos already in the bucket, timed from StartExecution to SUCCEEDED.

Both go through everything the product does (S3 notification, SQS, the poller with
Lambda's semantics, the functions in their Runtime API worker processes, conditional
writes, Step Functions) on the same CPUs as the emulator itself, so they are compared with
the core's images/s from the same run. A last row gives the workers' cold starts (init:
imports and the model session) and a warm invocation's round trip.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from imgpipe.bench import BenchContext, Row

__all__ = ["section_local_stack", "STACK_SECTIONS"]

BACKFILL_ROUNDS = 3


def section_local_stack(ctx: BenchContext) -> list[Row]:
    from imgpipe.local.stack import LocalStack, StackOptions, free_port

    rows: list[Row] = []
    with LocalStack(StackOptions(port=free_port(), log_level="ERROR")) as stack:
        for name, image_set in ctx.sets.items():
            datas = [p.read_bytes() for p in image_set.paths]
            rows += _set_rows(ctx, stack, name, datas, first=name == next(iter(ctx.sets)))
        rows.append(_worker_starts(ctx, stack))
    return rows


def _set_rows(ctx: BenchContext, stack: Any, name: str, datas: Sequence[bytes],
              first: bool) -> list[Row]:
    """One image set on the stack: (the cold first upload,) the ingest, its CPU per photo,
    the backfill rounds; each compared with the core measured right around it."""
    r = stack.resources
    assert r is not None
    s3 = stack.client("s3")
    rows: list[Row] = []
    # Enough photos that the fixed costs (the last batching window, starting the
    # execution) do not dominate: 128 of each set in a full run.
    copies = 1 if ctx.quick else max(1, 128 // len(datas))
    keys = _keys(f"{r.input_prefix}bench/{name}/", copies, len(datas))
    photos = list(datas) * copies
    # The core on the same photos right before and after each stack measurement,
    # averaged: this VM's speed drifts by +-15 % over minutes, so the ratio is taken
    # against the core at the time, not the one measured minutes earlier.
    core_cpu = time.process_time()
    core_before = _core_ips(ctx, photos)
    core_cpu = time.process_time() - core_cpu
    ctx.values[f"core.{name}.cpu_ms"] = 1000 * core_cpu / len(photos)
    if first:
        cold_row, core_before = _cold_first_upload(ctx, stack, name, keys, photos,
                                                   core_before)
        rows.append(cold_row)
    ctx.progress(f"local stack, {name}: uploading {len(keys)} photos to "
                 f"s3://{r.bucket}/{r.input_prefix} and waiting for every record")
    ingest_ips, stack_cpu = _ingest(stack, s3, keys, photos, ctx)
    ctx.values[f"stack_ingest.{name}.cpu_ms"] = 1000 * stack_cpu / len(keys)
    backfill = _backfill_rounds(ctx, stack, s3, name, keys, photos)
    rows.append(_vs_core(ctx, f"stack_ingest.{name}.ips",
                         f"local stack, end of upload -> last DynamoDB item, {name} "
                         f"({len(keys)} photos, {_workers(stack, r.ingest_function)} "
                         f"ingest worker(s), warm)", ingest_ips,
                         (core_before + backfill.core_first) / 2,
                         "measured just before and after"))
    stack_ms = ctx.values[f"stack_ingest.{name}.cpu_ms"]
    core_ms = ctx.values[f"core.{name}.cpu_ms"]
    rows.append(Row(f"stack_ingest.{name}.cpu_ms",
                    f"local stack ingest, CPU per photo (emulator + workers + poller), "
                    f"{name}", stack_ms, "ms/img", f"core {core_ms:.1f} ms/img",
                    f"{100 * core_ms / stack_ms:.0f} % of the core's efficiency",
                    section=f"stack-{name}"))
    results = backfill.results
    ips, ratio = sorted(results, key=lambda x: x[1])[len(results) // 2]  # median round
    ctx.details[f"stack_backfill.{name}.rounds"] = [
        {"ips": round(a, 2), "vs_core": round(b, 3)} for a, b in results]
    rows.append(_vs_core(ctx, f"stack_backfill.{name}.ips",
                         f"local stack, backfill (Step Functions), {name} "
                         f"({backfill.photos} photos, median of {len(results)} round(s): "
                         + ", ".join(f"{100 * b:.0f} %" for _, b in results) + ")",
                         ips, ips / ratio, "before and after each round",
                         ratio=ratio))
    return rows


@dataclass(frozen=True)
class _Backfills:
    """What `_backfill_rounds` measured."""

    core_first: float  # the core's images/s after the ingest, before round 1
    results: list[tuple[float, float]]  # per round: (backfill img/s, ratio to the core)
    photos: int  # backfilled per round


def _backfill_rounds(ctx: BenchContext, stack: Any, s3: Any, name: str, keys: Sequence[str],
                     photos: Sequence[bytes]) -> _Backfills:
    """Paired rounds, as for the core rows: core, backfill, core, backfill, core...; each
    backfill is compared with the core on the same photos right before and right after it
    (the caller reports the median round). Each round backfills a fresh prefix (a first
    backfill, as users run one) of twice the ingest set: a backfill is for buckets of many
    photos, and at 128 the fixed costs (starting the execution, the last batch draining)
    were a tenth of the time."""
    r = stack.resources
    rounds = 1 if ctx.quick else BACKFILL_ROUNDS
    twice = 1 if ctx.quick else 2
    backfill_photos = list(photos) * twice
    backfill_keys = [f"{c}-{k.rsplit('/', 1)[-1]}" for c in range(twice) for k in keys]
    _upload(s3, r.bucket, _under(f"bench-backfill/{name}/0/", backfill_keys,
                                 backfill_photos))
    cores = [_core_ips(ctx, backfill_photos)]  # after the ingest, before round 1
    results: list[tuple[float, float]] = []
    for i in range(rounds):
        ctx.progress(f"local stack, {name}: backfill of {len(backfill_keys)} photos "
                     f"already in the bucket, round {i + 1} of {rounds}")
        prefix = f"bench-backfill/{name}/{i}/"
        seconds, summary = _backfill(stack.client("stepfunctions"),
                                     r.state_machine_arn, r.bucket, prefix)
        _delete(s3, r.bucket, [prefix + k for k in backfill_keys])  # bounded memory
        if i + 1 < rounds:
            _upload(s3, r.bucket, _under(f"bench-backfill/{name}/{i + 1}/",
                                         backfill_keys, backfill_photos))
        cores.append(_core_ips(ctx, backfill_photos))
        classified = int(summary["counts"]["classified"])
        if classified != len(backfill_keys):
            raise RuntimeError(f"backfill classified {classified} of "
                               f"{len(backfill_keys)}: {summary}")
        ips = classified / seconds
        results.append((ips, ips / ((cores[-2] + cores[-1]) / 2)))
    return _Backfills(cores[0], results, len(backfill_keys))


def _cold_first_upload(ctx: BenchContext, stack: Any, name: str, keys: Sequence[str],
                       photos: Sequence[bytes], core_before: float) -> tuple[Row, float]:
    """The first upload with every ingest worker stopped: it also starts them (their init:
    imports, the model's verification and session), as a first burst on AWS starts cold
    execution environments; reported beside the steady state. The stack's s3:TestEvent is
    consumed first: sharing the upload's batches, it would leave a partial last batch
    waiting out the batching window. Returns the row and the core's images/s measured after."""
    r = stack.resources
    _drain(stack.client("sqs"), r.queue_url)
    stack.pools[r.ingest_function].stop_idle()
    ctx.progress(f"local stack, {name}: uploading {len(keys)} photos to "
                 f"s3://{r.bucket}/{r.input_prefix} (workers start cold)")
    cold = [k.replace("/bench/", "/bench-cold/", 1) for k in keys]
    ips, _ = _ingest(stack, stack.client("s3"), cold, photos, ctx)
    core_after = _core_ips(ctx, photos)
    row = _vs_core(ctx, f"stack_ingest_cold.{name}.ips",
                   f"local stack, first upload, workers start cold, {name} "
                   f"({len(keys)} photos)", ips, (core_before + core_after) / 2,
                   "measured just before and after")
    return row, core_after


def _ingest(stack: Any, s3: Any, keys: Sequence[str], photos: Sequence[bytes],
            ctx: BenchContext) -> tuple[float, float]:
    """Upload the photos under `keys`, wait for every record: images/s from the end of the
    upload to the last record, and the stack's CPU seconds meanwhile (emulator, workers,
    poller: other load on the machine does not change them)."""
    r = stack.resources
    _upload(s3, r.bucket, zip(keys, photos, strict=True))
    started, cpu_before = time.perf_counter(), _stack_cpu(stack)
    stack.wait_for_items([f"s3://{r.bucket}/{k}" for k in keys], ctx.manifest.model_id,
                         timeout_s=600)
    ips = len(keys) / (time.perf_counter() - started)
    return ips, _cpu_delta(cpu_before, _stack_cpu(stack))


def _drain(sqs: Any, queue_url: str, timeout_s: float = 60.0) -> None:
    """Wait until the queue has no message left, visible or in flight."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
        if not any(int(attrs["Attributes"].get(n, 0)) for n in names):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{queue_url} still has messages after {timeout_s:.0f} s: "
                       f"{attrs['Attributes'].get(names[0])} visible, "
                       f"{attrs['Attributes'].get(names[1])} in flight")


def _keys(prefix: str, copies: int, photos: int) -> list[str]:
    return [f"{prefix}{c}-{i}.jpg" for c in range(copies) for i in range(photos)]


def _stack_cpu(stack: Any) -> dict[int, float]:
    """CPU seconds so far of the stack's processes: this one (poller, function host), the
    emulator and every live worker, by pid (0: this process)."""
    pids = [stack._emulator.pid] + [w.proc.pid for pool in stack.pools.values()
                                    for w in pool.workers if w.proc is not None]
    cpu = {0: time.process_time()}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, ValueError, IndexError):  # not Linux, or gone
            continue
    return cpu


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _workers(stack: Any, function: str) -> int:
    return int(stack.pools[function].max_workers)


def _worker_starts(ctx: BenchContext, stack: Any) -> Row:
    """Cold start of the function workers seen so far (ingest and backfill: imports, the
    model's verification and session), and the round trip of a warm invocation through the
    Runtime API (the summary function on an empty Map output, median of 20)."""
    cold = sorted(i.init_s for i in stack.invocations if i.init_s is not None)
    r = stack.resources
    pool = stack.pools[r.outputs["SummaryFunctionName"]]
    event = json.dumps({"map_run": [], "request": {}}).encode()
    pool.invoke(event)  # its own cold start
    warm = sorted(pool.invoke(event).duration_s for _ in range(20))
    ctx.values["stack_worker.cold_s"] = cold[len(cold) // 2] if cold else 0.0
    ctx.values["stack_worker.warm_ms"] = 1000 * warm[len(warm) // 2]
    ctx.details["stack_worker.cold_starts_s"] = [round(c, 3) for c in cold]
    return Row("stack_worker.cold_s",
               f"local stack, function worker cold start (median of {len(cold)}: "
               + ", ".join(f"{c:.2f}" for c in cold) + " s)",
               ctx.values["stack_worker.cold_s"], "s",
               f"warm invocation round trip {ctx.values['stack_worker.warm_ms']:.1f} ms",
               section="stack-workers")


def _upload(s3: Any, bucket: str, objects: Iterable[tuple[str, bytes]]) -> None:
    """PutObject with 10 requests in flight, as `aws s3 cp --recursive` does by default."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=10) as pool:
        for future in [pool.submit(s3.put_object, Bucket=bucket, Key=k, Body=d)
                       for k, d in objects]:
            future.result()


def _delete(s3: Any, bucket: str, keys: Sequence[str]) -> None:
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})


def _under(prefix: str, keys: Sequence[str], photos: Sequence[bytes]
           ) -> Iterable[tuple[str, bytes]]:
    return ((prefix + k.rsplit("/", 1)[-1], d) for k, d in zip(keys, photos, strict=True))


def _vs_core(ctx: BenchContext, key: str, label: str, ips: float, core: float, when: str,
             ratio: float | None = None) -> Row:
    ratio = ips / core if ratio is None else ratio
    ctx.values[key] = ips
    ctx.values[key.replace(".ips", ".vs_core")] = ratio
    name = key.split(".")[1]
    return Row(key, label, ips, "img/s",
               f"core {core:.1f} img/s on the same photos, {when}",
               f"{100 * ratio:.0f} % of the core", section=f"stack-{name}")


def _core_ips(ctx: BenchContext, photos: Sequence[bytes]) -> float:
    """`classify_many` over the photos from memory (the core row's method), images/s."""
    from pipeline.classifier import Classifier

    def loader(data: bytes) -> Callable[[], bytes]:
        return lambda: data

    with Classifier(ctx.manifest) as clf:
        started = time.perf_counter()
        results = list(clf.classify_many((i, loader(d)) for i, d in enumerate(photos)))
        return len(results) / (time.perf_counter() - started)


def _backfill(sfn: Any, arn: str, bucket: str, prefix: str) -> tuple[float, dict[str, Any]]:
    execution = sfn.start_execution(stateMachineArn=arn,
                                    input=json.dumps({"bucket": bucket, "prefix": prefix}))
    while True:  # polling slowly: the execution's own start/stop dates give the duration
        desc = sfn.describe_execution(executionArn=execution["executionArn"])
        if desc["status"] != "RUNNING":
            break
        time.sleep(0.5)
    seconds = (desc["stopDate"] - desc["startDate"]).total_seconds()
    if desc["status"] != "SUCCEEDED":
        raise RuntimeError(f"backfill {desc['status']}: {desc.get('cause')}")
    return seconds, json.loads(desc["output"])


STACK_SECTIONS: Sequence[Any] = (section_local_stack,)
