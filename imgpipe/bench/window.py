"""The batching window on the embedded stack: how long one photo waits, and what a window
saves under steady load.

The ingest queue's event source mapping gathers messages for up to
MaximumBatchingWindowInSeconds (the template's parameter; the local poller reads it from
the deployed mapping, `StackOptions.batching_window_s` overrides it for a run) before it
invokes the function. For each window of `WINDOWS`, on one stack, warm:

- *one photo at a time*: upload one 12 MP photo, time the end of the upload to its
  DynamoDB item (a consistent GetItem every 25 ms), the median of a few;
- *a steady rate*: upload web-size photos at 20 and 100 a second (scheduled, 10 uploads in
  flight at most, as `aws s3 cp` keeps) and price every ingest invocation of the run as
  Lambda bills it: its duration rounded up to the millisecond x the function's memory, plus
  the request, plus SQS's requests (send, receive, delete); per million photos. Durations
  are the local workers' (loopback S3 and DynamoDB), so the windows compare with each
  other, not with AWS's bill.

A window of 0 allows at most 10 messages a batch (an SQS event source limit: BatchSize above
10 needs a window of at least 1 s), so that row runs with batches of 10.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from imgpipe.bench import BenchContext, Row
from imgpipe.bench.stack import _delete, _drain

__all__ = ["section_batching_window", "WINDOW_SECTIONS", "WINDOWS", "RATES"]

WINDOWS = (0, 1, 2, 5)
RATES = (20, 100)
QUICK_WINDOWS = (0, 1)
QUICK_RATES = (20,)
STEADY_S = 20.0  # seconds of uploads at each rate (a quick run: 1 s)
QUICK_STEADY_S = 1.0
POLL_S = 0.025


def section_batching_window(ctx: BenchContext) -> list[Row]:
    from imgpipe.local.stack import LocalStack, StackOptions, free_port

    windows = QUICK_WINDOWS if ctx.quick else WINDOWS
    rates = QUICK_RATES if ctx.quick else RATES
    rows: list[Row] = []
    # A failed batch comes back after 1 s rather than the queue's visibility timeout (721 s),
    # so a fault costs the run a retry, not ten minutes; its invocation is counted apart.
    options = StackOptions(port=free_port(), log_level="ERROR", retry_visibility_s=1)
    run = _WindowRun(ctx)
    with LocalStack(options, on_batch=run.on_batch) as stack:
        r = stack.resources
        assert r is not None
        run.attach(stack)
        for window in windows:
            _set_window(stack, window, r.batch_size)
            rows.append(run.single(window))
            rows += [run.steady(window, rate) for rate in rates]
        template_window = r.batching_window_s
    widest = max(windows)
    for i, row in enumerate(rows):
        for window in windows:
            for rate in rates:
                base = ctx.values.get(f"window.{widest}.r{rate}.usd_per_m")
                if row.key == f"window.{window}.r{rate}.usd_per_m" and base:
                    ratio = row.value / base
                    ctx.values[f"window.{window}.r{rate}.vs_widest"] = ratio
                    rows[i] = dataclasses.replace(
                        row, ratio=f"{ratio:.2f}x the {widest} s window's")
    if template_window in windows:
        ctx.values["window.template.single_s"] = ctx.values[f"window.{template_window}.single_s"]
        if f"window.{template_window}.r100.vs_widest" in ctx.values:
            ctx.values["window.template.r100.vs_widest"] = \
                ctx.values[f"window.{template_window}.r100.vs_widest"]
    ctx.details["window.template_s"] = template_window
    return rows


class _WindowRun:
    """One stack's measurements: the warm single photo and the steady rates."""

    def __init__(self, ctx: BenchContext) -> None:
        from imgpipe.cost import load_prices

        self.ctx = ctx
        self.prices = load_prices()
        self.batches: list[Any] = []
        self.lock = threading.Lock()
        big = ctx.sets["12mp"]
        self.small = ctx.sets.get("web", big)
        self.photo = big.paths[0].read_bytes()
        self.smalls = [p.read_bytes() for p in self.small.paths]
        self.singles = 1 if ctx.quick else 5
        self.steady_s = QUICK_STEADY_S if ctx.quick else STEADY_S
        self.model = ctx.manifest.model_id

    def on_batch(self, result: Any) -> None:
        with self.lock:
            self.batches.append(result)

    def attach(self, stack: Any) -> None:
        self.stack, self.r = stack, stack.resources
        self.s3, self.ddb = stack.client("s3"), stack.client("dynamodb")

    def single(self, window: int) -> Row:
        # The first photo warms the workers and empties the queue.
        _one_photo(self.s3, self.ddb, self.r, f"bench-window/{window}/warm.jpg", self.photo,
                   self.model)
        waits = [_one_photo(self.s3, self.ddb, self.r, f"bench-window/{window}/one-{i}.jpg",
                            self.photo, self.model) for i in range(self.singles)]
        single = statistics.median(waits)
        self.ctx.values[f"window.{window}.single_s"] = single
        return Row(f"window.{window}.single_s", "one 12 MP photo at a time, warm: end of "
                   f"upload -> its record, batching window {window} s", single, "s",
                   f"median of {self.singles}: " + ", ".join(f"{w:.2f}" for w in waits)
                   + " s", section="stack-window")

    def steady(self, window: int, rate: int) -> Row:
        r = self.r
        self.ctx.progress(f"batching window {window} s: {rate} photos/s for "
                          f"{self.steady_s:.0f} s")
        with self.lock:
            self.batches.clear()
        keys = [f"{r.input_prefix}bench-window/{window}/{rate}/{i}.jpg"
                for i in range(max(2, int(rate * self.steady_s)))]
        achieved, drain = _steady(self.stack, self.s3, r, keys, self.smalls, rate, self.model)
        _delete(self.s3, r.bucket, keys)  # the emulator keeps objects in memory
        with self.lock:
            run = [b for b in self.batches if b.received and not b.failed]
            failed = sum(1 for b in self.batches if b.failed)
            why = next((b.error for b in self.batches if b.failed and b.error), None)
        images = sum(b.received for b in run)
        memory_gb = r.function_memory_mb / 1024
        gb_s = sum(math.ceil(b.seconds * 1000) / 1000 * memory_gb for b in run)
        usd = (gb_s * self.prices["lambda_gb_s_x86_64"]
               + len(run) * self.prices["lambda_request"]
               + (images + 2 * len(run)) * self.prices["sqs_request"])
        per_m = usd / images * 1e6 if images else 0.0
        key = f"window.{window}.r{rate}.usd_per_m"
        self.ctx.values[key] = per_m
        self.ctx.values[f"window.{window}.r{rate}.batch"] = images / len(run) if run else 0.0
        return Row(key, f"ingest at {rate} photos/s ({self.small.name}), batching window "
                   f"{window} s: Lambda + SQS per million photos (local durations)", per_m,
                   "USD/M", f"{len(run)} invocations of {images / max(1, len(run)):.1f} "
                   f"photos on average; uploads at {achieved:.0f}/s, last record "
                   f"{drain:.1f} s after the last upload"
                   + (f"; {failed} failed batch(es) retried, not priced" if failed else "")
                   + (f" (first: {why})" if why else ""),
                   section="stack-window")


def _set_window(stack: Any, window: int, batch_size: int) -> None:
    """The event source mapping's window for what follows; the pollers read both values on
    every batch. A window of 0 allows at most 10 messages a batch, as on AWS."""
    stack.poller.batching_window_s = window
    stack.poller.batch_size = min(batch_size, 10) if window == 0 else batch_size
    # A failed batch's messages come back 1, 3, 9, 27 and 81 s later (the poller's quick
    # release): wait out all of them.
    _drain(stack.client("sqs"), stack.resources.queue_url, timeout_s=180)


def _one_photo(s3: Any, ddb: Any, r: Any, name: str, data: bytes, model: str) -> float:
    key = f"{r.input_prefix}{name}"
    s3.put_object(Bucket=r.bucket, Key=key, Body=data)
    started = time.perf_counter()
    item_key = {"image": {"S": f"s3://{r.bucket}/{key}"}, "model": {"S": model}}
    deadline = started + 120
    while time.perf_counter() < deadline:
        if "Item" in ddb.get_item(TableName=r.table, Key=item_key, ConsistentRead=True,
                                  ProjectionExpression="image"):
            return time.perf_counter() - started
        time.sleep(POLL_S)
    raise RuntimeError(f"no record for s3://{r.bucket}/{key} after 120 s")


def _steady(stack: Any, s3: Any, r: Any, keys: Sequence[str], photos: Sequence[bytes],
            rate: float, model: str) -> tuple[float, float]:
    """Upload `keys` at `rate` a second (each at its scheduled time), wait for every
    record: (the rate the uploads reached, seconds from the last upload to the last
    record)."""
    start = time.perf_counter() + 0.1

    def put(i: int) -> None:
        time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        s3.put_object(Bucket=r.bucket, Key=keys[i], Body=photos[i % len(photos)])

    with ThreadPoolExecutor(max_workers=10) as pool:
        for future in [pool.submit(put, i) for i in range(len(keys))]:
            future.result()
    uploaded = time.perf_counter()
    stack.wait_for_items([f"s3://{r.bucket}/{k}" for k in keys], model, timeout_s=600)
    achieved = (len(keys) - 1) / max(1e-9, uploaded - start)
    return achieved, time.perf_counter() - uploaded


WINDOW_SECTIONS: Sequence[Any] = (section_batching_window,)
