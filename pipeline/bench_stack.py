"""Benchmark sections that run on the embedded stack (`imgpipe local`), next to the core.

- *local ingest*: photos uploaded to the input prefix the way `aws s3 cp` does (PutObject
  over HTTP to the emulator), timed from the first upload to the last DynamoDB item;
- *local backfill*: photos already in the bucket, timed from StartExecution to SUCCEEDED.

Both go through everything the product does (S3 notification, SQS, the poller with
Lambda's semantics, the handler, conditional writes, Step Functions) on the same CPUs as
the emulator itself, so they are compared with the core's images/s from the same run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pipeline.bench import BenchContext, Row

__all__ = ["section_local_stack", "STACK_SECTIONS"]


def section_local_stack(ctx: BenchContext) -> list[Row]:
    from pipeline.local.stack import LocalStack, StackOptions, free_port

    rows: list[Row] = []
    with LocalStack(StackOptions(port=free_port(), log_level="ERROR")) as stack:
        r = stack.resources
        assert r is not None
        s3 = stack.client("s3")
        for name, image_set in ctx.sets.items():
            datas = [p.read_bytes() for p in image_set.paths]
            # Enough photos that the fixed costs (the last batching window, starting the
            # execution) do not dominate: 128 of each set in a full run.
            copies = 1 if ctx.quick else max(1, 128 // len(datas))
            ctx.progress(f"local stack, {name}: uploading {len(datas) * copies} photos to "
                         f"s3://{r.bucket}/{r.input_prefix} and waiting for every record")
            keys = [f"{r.input_prefix}bench/{name}/{c}-{i}.jpg"
                    for c in range(copies) for i in range(len(datas))]
            photos = datas * copies
            # The core on the same photos right before and after each stack measurement,
            # averaged: this VM's speed drifts by +-15 % over minutes, so the ratio is taken
            # against the core at the time, not the one measured minutes earlier.
            core_before = _core_ips(ctx, photos)
            started = time.perf_counter()
            _upload(s3, r.bucket, zip(keys, photos, strict=True))
            stack.wait_for_records([f"s3://{r.bucket}/{k}" for k in keys],
                                   ctx.manifest.model_id, timeout_s=600)
            ingest_ips = len(keys) / (time.perf_counter() - started)

            ctx.progress(f"local stack, {name}: backfill of {len(keys)} photos already in "
                         f"the bucket")
            prefix = f"bench-backfill/{name}/"
            _upload(s3, r.bucket, ((prefix + k.rsplit("/", 1)[-1], d)
                                   for k, d in zip(keys, photos, strict=True)))
            core_between = _core_ips(ctx, photos)
            seconds, summary = _backfill(stack.client("stepfunctions"), r.state_machine_arn,
                                         r.bucket, prefix)
            core_after = _core_ips(ctx, photos)
            classified = int(summary["counts"]["classified"])
            if classified != len(keys):
                raise RuntimeError(f"backfill classified {classified} of {len(keys)}: "
                                   f"{summary}")
            rows.append(_vs_core(ctx, f"stack_ingest.{name}.ips",
                                 f"local stack, uploads -> DynamoDB items, {name} "
                                 f"({len(keys)} photos)", ingest_ips, name,
                                 (core_before + core_between) / 2))
            rows.append(_vs_core(ctx, f"stack_backfill.{name}.ips",
                                 f"local stack, backfill (Step Functions), {name} "
                                 f"({classified} photos)", classified / seconds, name,
                                 (core_between + core_after) / 2))
    return rows


def _upload(s3: Any, bucket: str, objects: Iterable[tuple[str, bytes]]) -> None:
    """PutObject with 10 requests in flight, as `aws s3 cp --recursive` does by default."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=10) as pool:
        for future in [pool.submit(s3.put_object, Bucket=bucket, Key=k, Body=d)
                       for k, d in objects]:
            future.result()


def _vs_core(ctx: BenchContext, key: str, label: str, ips: float, name: str,
             core: float) -> Row:
    ctx.values[key] = ips
    ctx.values[key.replace(".ips", ".vs_core")] = ips / core
    return Row(key, label, ips, "img/s",
               f"core {core:.1f} img/s on the same photos, measured just before and after",
               f"{100 * ips / core:.0f} % of the core", section=f"stack-{name}")


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
