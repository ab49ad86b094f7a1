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
from collections.abc import Iterable, Sequence
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
            started = time.perf_counter()
            _upload(s3, r.bucket, zip(keys, datas * copies, strict=True))
            stack.wait_for_records([f"s3://{r.bucket}/{k}" for k in keys],
                                   ctx.manifest.model_id, timeout_s=600)
            seconds = time.perf_counter() - started
            ips = len(keys) / seconds
            rows.append(_vs_core(ctx, f"stack_ingest.{name}.ips",
                                 f"local stack, uploads -> DynamoDB items, {name} "
                                 f"({len(keys)} photos)", ips, name))

            ctx.progress(f"local stack, {name}: backfill of {len(keys)} photos already in "
                         f"the bucket")
            prefix = f"bench-backfill/{name}/"
            _upload(s3, r.bucket, ((prefix + k.rsplit("/", 1)[-1], d)
                                   for k, d in zip(keys, datas * copies, strict=True)))
            seconds, summary = _backfill(stack.client("stepfunctions"), r.state_machine_arn,
                                         r.bucket, prefix)
            classified = int(summary["counts"]["classified"])
            if classified != len(keys):
                raise RuntimeError(f"backfill classified {classified} of {len(keys)}: "
                                   f"{summary}")
            rows.append(_vs_core(ctx, f"stack_backfill.{name}.ips",
                                 f"local stack, backfill (Step Functions), {name} "
                                 f"({classified} photos)", classified / seconds, name))
    return rows


def _upload(s3: Any, bucket: str, objects: Iterable[tuple[str, bytes]]) -> None:
    """PutObject with 10 requests in flight, as `aws s3 cp --recursive` does by default."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=10) as pool:
        for future in [pool.submit(s3.put_object, Bucket=bucket, Key=k, Body=d)
                       for k, d in objects]:
            future.result()


def _vs_core(ctx: BenchContext, key: str, label: str, ips: float, name: str) -> Row:
    core = ctx.values.get(f"core.{name}.ips")
    ratio = ""
    reference = ""
    if core:
        ctx.values[key.replace(".ips", ".vs_core")] = ips / core
        reference = f"core {core:.1f} img/s"
        ratio = f"{100 * ips / core:.0f} % of the core"
    ctx.values[key] = ips
    return Row(key, label, ips, "img/s", reference, ratio, section=f"stack-{name}")


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
