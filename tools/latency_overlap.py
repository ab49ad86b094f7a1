"""How much of an invocation is spent waiting on S3 and DynamoDB: a small measurement.

    python -m tools.latency_overlap                       # 32 x 12 MP, 16 and 64 a call
    python -m tools.latency_overlap --images 16 --rounds 1 --per-call 16

Not a test and not the benchmark: it pins itself to one CPU (as a 1,769 MB Lambda has one
vCPU), puts the benchmark's 12 MP photos (`imgpipe.bench.images`, cached in
bench/out/images/) into moto in this process, and runs `ClassificationService.process`
over them in calls of `--per-call` images, as the ingest (16) and backfill (64) functions
do, twice per round: with no added latency, then with AWS-like latency added to every
request by a botocore hook (`RequestLatency`: GET 20 ms + the body at 90 MB/s, PUT 25 ms,
other S3 calls 20 ms, DynamoDB 6 ms). Each round also times the core alone
(`Classifier.classify_many` over the bytes in memory) for its CPU time per image.

It prints, per round, wall time per image for each call size and latency, the process's
CPU time per image during those runs (the SDK's work included; moto runs in a process of
its own, on another CPU), the time per image when neither a decode nor the model ran
(waiting, whatever else the machine does: the figure to compare before and after a change
on a busy machine), and the core's CPU time per image; the target's ratio is wall with
AWS-like latency over the core's CPU time. `--timeline` shows each call's start, end and
idle time. Wall and CPU figures mean something on an idle machine only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["RequestLatency", "main"]


@dataclass
class RequestLatency:
    """Sleeps after each botocore call as long as the request would have taken on AWS.

    Registered on a client's `after-call` event (emitted once per API call, errors
    included), so it works with moto in-process as with any endpoint. `on` switches it.
    """

    get_ms: float = 20.0
    get_mb_s: float = 90.0
    put_ms: float = 25.0
    s3_other_ms: float = 20.0
    dynamodb_ms: float = 6.0
    on: bool = True

    def attach(self, client: Any) -> Any:
        client.meta.events.register("after-call", self._after_call)
        return client

    def delay_s(self, service: str, operation: str, parsed: Any) -> float:
        if service == "dynamodb":
            return self.dynamodb_ms / 1000
        if operation == "GetObject":
            size = int((parsed or {}).get("ContentLength") or 0)
            return self.get_ms / 1000 + size / (self.get_mb_s * 1e6)
        if operation == "PutObject":
            return self.put_ms / 1000
        return self.s3_other_ms / 1000

    def _after_call(self, event_name: str = "", parsed: Any = None, **_: Any) -> None:
        if not self.on:
            return
        service, operation = (event_name.split(".") + ["", ""])[1:3]
        time.sleep(self.delay_s(service, operation, parsed))


class Timeline:
    """`Spans` that keep (name, start, end) of every fetch, decode, inference and write."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float]] = []

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.events.append((name, start, time.perf_counter()))

    def idle_ms(self, since: float, until: float) -> tuple[float, float, float]:
        """Time in (since, until) when no decode and no inference ran, in ms: before the
        first, between them, after the last. That is time spent waiting on requests (or
        on other work of the process), whatever else the machine is doing."""
        spans = sorted((a, b) for n, a, b in self.events
                       if n in ("decode", "inference") and a >= since)
        if not spans:
            return (1000 * (until - since), 0.0, 0.0)
        between, reached = 0.0, spans[0][1]
        for a, b in spans[1:]:
            between += max(0.0, a - reached)
            reached = max(reached, b)
        return (1000 * (spans[0][0] - since), 1000 * between, 1000 * (until - reached))

    def summary(self, since: float, until: float) -> str:
        """When each kind of work first started and last ended, in ms from `since`."""
        parts = []
        for name in ("fetch", "decode", "inference", "write"):
            spans = [(a, b) for n, a, b in self.events if n == name and a >= since]
            if spans:
                parts.append(f"{name} {1000 * (min(a for a, _ in spans) - since):.0f}-"
                             f"{1000 * (max(b for _, b in spans) - since):.0f}")
        first, between, last = self.idle_ms(since, until)
        return (", ".join(parts) + f", returned {1000 * (until - since):.0f} ms; idle "
                f"{first:.0f} ms first, {between:.0f} between, {last:.0f} last")


def _pin_to_one_cpu() -> tuple[int, int | None]:
    """This process on one CPU; another one (if any) for the emulator."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    return cpus[-1], (cpus[0] if len(cpus) > 1 else None)


@contextmanager
def _moto_server(cpu: int | None) -> Iterator[str]:
    """moto's server in a process of its own (on another CPU when there is one), so its
    work is not counted as the service's: on AWS it happens on AWS's machines."""
    import socket
    import subprocess
    import sys
    import urllib.request

    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        os.environ.pop(var, None)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1",
         "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def _make_table(ddb: Any, table: str) -> None:
    ddb.create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "image", "AttributeType": "S"},
                              {"AttributeName": "model", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "image", "KeyType": "HASH"},
                   {"AttributeName": "model", "KeyType": "RANGE"}])


def _clear(clients: Any, bucket: str, table: str, prefix: str) -> None:
    """Records and documents of the last run go, so the next run writes afresh."""
    for page in clients.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix=prefix):
        for obj in page.get("Contents", []):
            clients.s3.delete_object(Bucket=bucket, Key=obj["Key"])
    for item in clients.dynamodb.scan(TableName=table)["Items"]:
        clients.dynamodb.delete_item(TableName=table,
                                     Key={"image": item["image"], "model": item["model"]})


def _core_cpu_ms(classifier: Any, datas: Sequence[bytes]) -> float:
    cpu = time.process_time()
    results = list(classifier.classify_many(
        (i, (lambda d=d: d)) for i, d in enumerate(datas)))
    assert all(r.error is None for r in results)
    return 1000 * (time.process_time() - cpu) / len(datas)


def _service_run(service: Any, refs: Sequence[Any], per_call: int, timeline: Timeline,
                 verbose: bool = False) -> tuple[float, float, float]:
    """(wall ms, CPU ms, idle ms) per image over `refs` in calls of `per_call`."""
    wall, cpu, idle = time.perf_counter(), time.process_time(), 0.0
    for start in range(0, len(refs), per_call):
        began = time.perf_counter()
        outcomes = service.process(refs[start:start + per_call])
        ended = time.perf_counter()
        idle += sum(timeline.idle_ms(began, ended))
        if verbose:
            print(f"    call {start // per_call + 1}: {timeline.summary(began, ended)}")
        bad = [o for o in outcomes if o.status != "classified"]
        if bad:
            raise SystemExit(f"not classified: {bad[0]}")
    n = len(refs)
    return (1000 * (time.perf_counter() - wall) / n, 1000 * (time.process_time() - cpu) / n,
            idle / n)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-call", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--set", choices=("12mp", "web"), default="12mp",
                        help="the benchmark's 12 MP photos or its web-size ones (800x600)")
    parser.add_argument("--cache", default="bench/out/images")
    parser.add_argument("--timeline", action="store_true",
                        help="print when each call's fetches, decodes, inference and writes "
                             "ran")
    args = parser.parse_args(argv)
    cpu, other = _pin_to_one_cpu()  # before any pool or session counts the CPUs

    from pathlib import Path

    from imgpipe.bench import images as bench_images
    from pipeline.aws import create_clients
    from pipeline.events import ObjectRef
    from pipeline.factory import build_classifier, build_service
    from pipeline.settings import Settings

    size, sigma, quality = ((bench_images.BIG_SIZE, bench_images.BIG_NOISE_SIGMA,
                             bench_images.BIG_QUALITY) if args.set == "12mp" else
                            (bench_images.WEB_SIZE, bench_images.WEB_NOISE_SIGMA,
                             bench_images.WEB_QUALITY))
    images = bench_images.generate_images(Path(args.cache), args.set, args.images, size,
                                          sigma, quality, print)
    datas = [p.read_bytes() for p in images.paths]
    latency = RequestLatency(on=False)
    bucket, table = "latency-overlap", "latency-overlap"
    settings = Settings(table_name=table, bucket=bucket)
    print(f"pinned to CPU {cpu}; {len(datas)} photos {size[0]}x{size[1]}, "
          f"{statistics.fmean(map(len, datas)) / 1e6:.1f} MB on average; {latency}")
    with _moto_server(other) as url:
        settings = settings.with_(endpoint_url=url)
        clients = create_clients(settings)
        latency.attach(clients.s3)
        latency.attach(clients.dynamodb)
        clients.s3.create_bucket(Bucket=bucket)
        _make_table(clients.dynamodb, table)
        refs = []
        for i, data in enumerate(datas):
            key = f"incoming/{i:04d}.jpg"
            etag = clients.s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
            refs.append(ObjectRef(bucket=bucket, key=key, etag=etag.strip('"'),
                                  size=len(data)))
        timeline = Timeline()
        classifier = build_classifier(settings, spans=timeline)
        service = build_service(settings, clients, classifier, spans=timeline)
        _core_cpu_ms(classifier, datas[:4])  # warm-up
        _service_run(service, refs[:4], 4, timeline)
        _clear(clients, bucket, table, settings.output_prefix)
        for round_ in range(1, args.rounds + 1):
            core = _core_cpu_ms(classifier, datas)
            print(f"round {round_}: core CPU {core:.1f} ms/image")
            for per_call in sorted({min(p, len(refs)) for p in args.per_call}):
                for on in (False, True):
                    latency.on = on
                    wall, used, idle = _service_run(service, refs, per_call, timeline,
                                                    args.timeline)
                    latency.on = False
                    _clear(clients, bucket, table, settings.output_prefix)
                    print(f"  {per_call:3d} a call, {'AWS-like' if on else 'no'} latency: "
                          f"wall {wall:5.1f} ms/image ({wall / core:.2f}x core CPU), "
                          f"process CPU {used:5.1f}, idle {idle:4.1f} ms/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
