"""Fault injection over the local stack: N photos in, faults at random, then the books.

    python -m tools.chaos                      # 1,000 photos (the issue's "Done when")
    python -m tools.chaos --photos 40 --seed 3 # a quick run (the e2e test's size)

It starts the embedded stack (`imgpipe local`'s, in this process, on free loopback ports),
uploads N photos to a fresh folder of the input prefix (small generated JPEGs, each
different, plus the real sample photos) and, while the pipeline works through them,
injects at random:

- an ingest worker killed (SIGKILL) mid-flight: its batch comes back through SQS;
- DynamoDB replies lost after the write (the emulator applies the PutItem and answers 500;
  botocore's retry then meets its own write: `imgpipe.local.chaos`);
- the emulator frozen for a moment (SIGSTOP, then SIGCONT): every client waits on it;
- the disk filled for a moment: the stack keeps its state (`--state-dir`) on a small tmpfs
  of its own, which a filler file fills to the last byte and then frees, so every write the
  emulator cannot journal is refused with a retryable error. Mounting it needs root; run
  otherwise, the run keeps no state directory and says the fault is not injected.

Then it checks what the pipeline promises: exactly one record per photo, all classified,
one document per photo at the record's output key, the queue and the DLQ empty, and
`imgpipe reconcile` of the folder ok; it prints the counts and exits 0 when all hold, 1
otherwise. A killed batch would wait for the queue's visibility timeout (721 s with the
template's defaults) as on AWS; the run has the stack's poller release failed batches after
RETRY_VISIBILITY_S instead, so it stays bounded in time. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
RETRY_VISIBILITY_S = 2
FAULT_KINDS = ("worker killed", "emulator frozen", "disk full")
STATE_DISK_SIZE = "256m"

__all__ = ["ChaosResult", "generated_photos", "main", "run_chaos"]


@dataclass
class ChaosResult:
    photos: int
    seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    records: int = 0
    documents: int = 0
    problems: list[str] = field(default_factory=list)
    reconcile: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        faults = ", ".join(f"{n} {what}" for what, n in sorted(self.faults.items())) or "none"
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items())) or "none"
        out = [f"photos uploaded   {self.photos}",
               f"faults injected   {faults}",
               f"records           {self.records} ({statuses})",
               f"documents         {self.documents}",
               f"reconcile         {self.reconcile}",
               f"time              {self.seconds:.0f} s"]
        out += [f"PROBLEM: {p}" for p in self.problems]
        out.append("ok: one record and one document per photo" if self.ok else "FAILED")
        return out


def generated_photos(n: int, seed: int, size: tuple[int, int] = (96, 72)) -> list[bytes]:
    """`n` small JPEGs, each different (so each has its own ETag), quickly made."""
    from PIL import Image

    rng = random.Random(seed)
    photos = []
    for i in range(n):
        image = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256),
                                        rng.randrange(256)))
        pixels = image.load()
        assert pixels is not None
        for _ in range(40):  # a few specks, and the index in the corner pixels
            pixels[rng.randrange(size[0]), rng.randrange(size[1])] = (
                rng.randrange(256), rng.randrange(256), rng.randrange(256))
        pixels[0, 0] = (i % 256, (i // 256) % 256, 0)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        photos.append(out.getvalue())
    return photos


class Faults:
    """Injects a fault every `every_s` (+-50 %) until stopped."""

    def __init__(self, stack: Any, rng: random.Random, every_s: float,
                 kinds: Sequence[str], log: Callable[[str], None]) -> None:
        self.stack, self.rng, self.every_s, self.kinds, self.log = (
            stack, rng, every_s, list(kinds), log)
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        if self.kinds:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        bag: list[str] = []  # every kind once, in a random order, before any repeats
        while not self._stop.wait(self.every_s * self.rng.uniform(0.5, 1.5)):
            if not bag:
                bag = self.rng.sample(self.kinds, len(self.kinds))
            kind = bag.pop()
            try:
                if kind == "worker killed" and self._kill_worker():
                    self.counts[kind] += 1
                elif kind == "emulator frozen":
                    self._freeze(self.rng.uniform(0.5, 2.0))
                    self.counts[kind] += 1
                elif kind == "disk full":
                    self._fill_disk(self.rng.uniform(0.5, 2.0))
                    self.counts[kind] += 1
            except Exception as e:  # a worker that exited by itself, etc.: not a fault
                self.log(f"chaos: {kind} not injected: {type(e).__name__}: {e}")

    def _kill_worker(self, patience_s: float = 10.0) -> bool:
        r = self.stack.resources
        pool = self.stack.pools.get(r.ingest_function)
        deadline = time.monotonic() + patience_s
        # Between invocations (or just after a kill) no worker may be alive: wait for one.
        while not (live := [w for w in (pool.workers if pool else []) if w.alive]):
            if self._stop.wait(0.2) or time.monotonic() > deadline:
                self.log("chaos: worker killed not injected: no ingest worker alive")
                return False
        worker = self.rng.choice(live)
        os.kill(worker.proc.pid, signal.SIGKILL)
        self.log(f"chaos: killed ingest worker {worker.proc.pid}")
        return True

    def _freeze(self, seconds: float) -> None:
        pid = self.stack._emulator.pid  # noqa: SLF001 - the tool reaches into its own stack
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.log(f"chaos: froze the emulator for {seconds:.1f} s")

    def _fill_disk(self, seconds: float) -> None:
        """The state directory's own tmpfs, full for `seconds`, then freed."""
        filler = Path(self.stack.options.state_dir).parent / "filler"
        try:
            with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * (1 << 20))
            time.sleep(seconds)
        finally:
            filler.unlink(missing_ok=True)
        self.log(f"chaos: filled the state directory's disk for {seconds:.1f} s")


@contextlib.contextmanager
def state_disk(where: Path) -> Iterator[Path | None]:
    """A small tmpfs for the stack's state directory (root only), or None."""
    if os.geteuid() != 0:
        yield None
        return
    mount = where / "state-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STATE_DISK_SIZE}", "tmpfs",
                    str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run_chaos(photos: int = 1000, *, seed: int = 1, lost_reply_rate: float = 0.05,
              fault_every_s: float = 4.0, kinds: Sequence[str] = FAULT_KINDS,
              timeout_s: float = 3600.0, log: Callable[[str], None] = print) -> ChaosResult:
    """One fault-injection run; see the module's docstring."""
    from imgpipe.local.stack import LocalStack, StackOptions, free_port
    from imgpipe.reconcile import reconcile
    from pipeline.modelstore import model_id_of

    rng = random.Random(seed)
    real = sorted(SAMPLES.glob("*.jpg"))[:max(0, min(6, photos // 10))]
    datas = [p.read_bytes() for p in real] + generated_photos(photos - len(real), seed)
    names = [p.name for p in real] + [f"gen-{i:05d}.jpg" for i in range(photos - len(real))]
    result = ChaosResult(photos=len(datas))
    with tempfile.TemporaryDirectory(prefix="imgpipe-chaos-") as tmp, \
            state_disk(Path(tmp)) as disk:
        if disk is None and "disk full" in kinds:
            kinds = [k for k in kinds if k != "disk full"]
            log("chaos: disk full not injected: mounting a small tmpfs for the state "
                "directory needs root")
        chaos_log = Path(tmp) / "faults.log"
        saved = {k: os.environ.get(k) for k in ("IMGPIPE_CHAOS_LOST_PUT_REPLIES",
                                                  "IMGPIPE_CHAOS_SEED", "IMGPIPE_CHAOS_LOG")}
        os.environ.update(IMGPIPE_CHAOS_LOST_PUT_REPLIES=str(lost_reply_rate),
                          IMGPIPE_CHAOS_SEED=str(seed), IMGPIPE_CHAOS_LOG=str(chaos_log))
        try:
            # The workers' metric lines (EMF, on stdout) would bury the counts printed.
            options = StackOptions(port=free_port(), log_level="ERROR",
                                   retry_visibility_s=RETRY_VISIBILITY_S,
                                   state_dir=disk / "state" if disk else None,
                                   function_env={"POWERTOOLS_METRICS_DISABLED": "true"})
            with LocalStack(options) as stack:
                started = time.monotonic()
                _run_with_faults(stack, rng, names, datas, fault_every_s, kinds, timeout_s,
                                 log, result, model_id_of(""), reconcile)
                result.seconds = time.monotonic() - started
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if chaos_log.exists():
            lost = len(chaos_log.read_text().splitlines())
            if lost:
                result.faults["DynamoDB reply lost"] = lost
    return result


def _run_with_faults(stack: Any, rng: random.Random, names: Sequence[str],
                     datas: Sequence[bytes], every_s: float, kinds: Sequence[str],
                     timeout_s: float, log: Callable[[str], None], result: ChaosResult,
                     model: str, reconcile: Any) -> None:
    r = stack.resources
    s3, ddb, sqs = stack.client("s3"), stack.client("dynamodb"), stack.client("sqs")
    folder = f"{r.input_prefix}chaos-{int(time.time())}/"
    keys = [folder + n for n in names]
    faults = Faults(stack, rng, every_s, kinds, log)
    faults.start()
    try:
        # The uploads are spread over time enough for every kind of fault to come while
        # photos are still arriving: a small run is otherwise over before the first fault.
        span_s = 1.5 * every_s * len(kinds)
        log(f"uploading {len(keys)} photos to s3://{r.bucket}/{folder} over at least "
            f"{span_s:.0f} s, with faults injected")
        waves = min(len(keys), 10)
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            for i in range(waves):
                wave = slice(i * len(keys) // waves, (i + 1) * len(keys) // waves)
                list(pool.map(lambda kd: _upload(s3, r.bucket, kd[0], kd[1]),
                              zip(keys[wave], datas[wave], strict=True)))
                time.sleep(max(0.0, began + span_s * (i + 1) / waves - time.monotonic()))
        images = [f"s3://{r.bucket}/{k}" for k in keys]
        last = [-1]

        def progress(done: int, total: int) -> None:
            if done // 100 != last[0] // 100 or done == total:
                log(f"  {done} of {total} records")
            last[0] = done

        stack.wait_for_items(images, model, timeout_s, progress)
    finally:
        faults.stop()
        result.faults.update(faults.counts)
    # The last writers may still be finishing documents: wait for the queues to drain.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (_depth(sqs, r.queue_url) or
                                           _depth(sqs, r.dlq_url)):
        time.sleep(1)
    _check(stack, s3, ddb, sqs, folder, images, model, reconcile, result)


def _upload(s3: Any, bucket: str, key: str, data: bytes, patience_s: float = 120) -> None:
    """PutObject as a careful client does: a 5xx answer (a write the emulator could not
    journal on a full disk, or a frozen emulator's timeout) is tried again until taken."""
    from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError

    deadline = time.monotonic() + patience_s
    while True:
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=data)
            return
        except (ClientError, ConnectionError, ReadTimeoutError) as e:
            status = getattr(e, "response", {}).get("ResponseMetadata", {}).get(
                "HTTPStatusCode", 500)
            if status < 500 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _depth(sqs: Any, url: str) -> int:
    from imgpipe.reconcile import queue_depth

    return int(queue_depth(sqs, url))


def _check(stack: Any, s3: Any, ddb: Any, sqs: Any, folder: str, images: Sequence[str],
           model: str, reconcile: Any, result: ChaosResult) -> None:
    from pipeline.table import PredictionsTable

    r = stack.resources
    records = PredictionsTable(ddb, r.table).get_many((i, model) for i in images)
    result.records = len(records)
    result.statuses.update(rec.status for rec in records.values())
    missing = [i for i in images if (i, model) not in records]
    if missing:
        result.problems.append(f"{len(missing)} photo(s) without a record: {missing[:3]}")
    not_classified = [k[0] for k, rec in records.items() if rec.status != "classified"]
    if not_classified:
        result.problems.append(f"{len(not_classified)} record(s) not classified: "
                               f"{not_classified[:3]}")
    out_prefix = f"{r.output_prefix}{model}/{folder}"
    documents: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=r.bucket,
                                                              Prefix=out_prefix):
        documents.update(o["Key"] for o in page.get("Contents", []))
    result.documents = len(documents)
    pointed = {rec.output_key for rec in records.values() if rec.output_key}
    if documents != pointed or len(documents) != len(images):
        result.problems.append(
            f"{len(documents)} document(s) for {len(images)} photo(s); "
            f"{len(pointed - documents)} record(s) point at no document, "
            f"{len(documents - pointed)} document(s) no record points at")
    for name, url in (("queue", r.queue_url), ("DLQ", r.dlq_url)):
        depth = _depth(sqs, url)
        if depth:
            result.problems.append(f"the {name} still holds {depth} message(s)")
    report = reconcile(s3, ddb, bucket=r.bucket, input_prefix=folder,
                       output_prefix=r.output_prefix, table=r.table, model=model,
                       queue_url=r.queue_url, dlq_url=r.dlq_url, sqs_client=sqs)
    result.reconcile = "ok" if report.ok else "; ".join(
        f"{kind}: {count} (e.g. {', '.join(examples[:2])})"
        for kind, count, examples, _ in report.problems()[:5])
    if not report.ok:
        result.problems.append(f"imgpipe reconcile: {result.reconcile}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=1000, help="photos to upload (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--lost-replies", type=float, default=0.05, metavar="RATE",
                   help="share of DynamoDB PutItem replies lost after the write (default 0.05)")
    p.add_argument("--fault-every", type=float, default=4.0, metavar="SECONDS",
                   help="mean seconds between worker kills / emulator freezes (default 4)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="give up waiting for the records after this long (default 3600)")
    args = p.parse_args(argv)
    if args.photos < 1 or not 0 <= args.lost_replies < 1 or args.fault_every <= 0:
        print("tools.chaos: --photos >= 1, 0 <= --lost-replies < 1, --fault-every > 0",
              file=sys.stderr)
        return 2
    result = run_chaos(args.photos, seed=args.seed, lost_reply_rate=args.lost_replies,
                       fault_every_s=args.fault_every, timeout_s=args.timeout,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    print("\n".join(result.lines()))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
