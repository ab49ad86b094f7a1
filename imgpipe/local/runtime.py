"""Lambda's execution environments, locally: worker processes under awslambdaric, each
talking to a Runtime API server of its own (the Runtime Interface Emulator's role, without
Docker).

    pool = FunctionPool(FunctionSpec(name="imgpipe-ingest", handler="handlers.ingest.handler",
                                     code_root=Path("build/package/x86_64"), ...), max_workers=2)
    result = pool.invoke(b'{"Records": [...]}')
    result.payload, result.function_error   # what the Invoke API answers

A worker is one process, `python -m awslambdaric HANDLER` (the runtime client AWS's own
Python images run), started with the function's environment and Lambda's own variables,
its code root on the path and as its working directory. It pulls invocations from
`/2018-06-01/runtime/invocation/next` and answers on `.../response` or `.../error`; an
import or init failure arrives on `/runtime/init/error`. As on Lambda:

- cold start: the first invocation waits for the worker's init (imports, and whatever the
  handler module builds at import); later invocations reuse the warm process;
- an init error fails the invocation with the error the runtime posted; the worker exits
  and the next invocation starts a fresh one;
- timeout: past `Lambda-Runtime-Deadline-Ms` the process group is killed and the
  invocation fails with `Sandbox.Timedout` / `Task timed out after N.NN seconds`;
- memory: a worker whose resident memory passes MemorySize is killed and the invocation
  fails with `Runtime.OutOfMemory` / `Runtime exited with error: signal: killed`;
- a worker that exits otherwise fails its invocation with `Runtime.ExitError`;
- concurrency is separate processes, up to the pool's maximum; idle workers stay warm for
  `keep_warm_s`, then stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imgpipe.local.runtime_api import Invocation, RuntimeApi, lambda_error

__all__ = ["FunctionSpec", "FunctionPool", "InvokeResult", "PoolStopped", "Worker",
           "cpu_shares", "lambda_error"]

log = logging.getLogger("imgpipe.local")

ACCOUNT = "123456789012"
# Lambda gives an on-demand init 10 s before it retries it inside the first invocation,
# under the function's timeout; locally both are one budget.
INIT_TIMEOUT_S = 10.0
_WATCH_INTERVAL_S = 0.05


@dataclass(frozen=True)
class FunctionSpec:
    """One function as the runtime sees it (from the deployed configuration)."""

    name: str
    handler: str
    code_root: Path
    timeout_s: float = 3.0
    memory_mb: int = 128
    environment: Mapping[str, str] = field(default_factory=dict, hash=False)
    python: str = sys.executable
    region: str = "us-east-1"

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{self.name}"


@dataclass(frozen=True)
class InvokeResult:
    payload: bytes
    function_error: str | None  # "Unhandled" on a failure, as X-Amz-Function-Error says
    request_id: str
    duration_s: float
    init_s: float | None = None  # the cold start this invocation waited for; None: warm
    pid: int = 0
    max_memory_mb: int = 0  # the worker's peak resident memory as sampled so far
    function: str = ""  # the function's name
    cpus: int = 0  # the CPUs its worker may run on (0: not pinned)

    @property
    def error_type(self) -> str | None:
        if not self.function_error:
            return None
        try:
            return str(json.loads(self.payload).get("errorType") or "")
        except (ValueError, AttributeError):
            return ""


class PoolStopped(RuntimeError):
    """The pool was stopped: no invocation is started any more."""


# ---------------------------------------------------------------- one worker


class Worker:
    """One execution environment: a runtime process and its Runtime API."""

    def __init__(self, spec: FunctionSpec, cpus: Sequence[int] = (),
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.cpus = tuple(cpus)
        self.extra_env = dict(extra_env or {})
        self.api: RuntimeApi | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.init_s: float | None = None  # set once the runtime is ready
        self.last_used = time.monotonic()
        self.invocations = 0
        self.peak_rss = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.api = RuntimeApi()
        env = worker_environment(self.spec, self.api.address, self.extra_env)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [self.spec.python, "-m", "awslambdaric", self.spec.handler],
            env=env, cwd=str(self.spec.code_root), stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a kill takes its children too
        )
        if self.cpus and hasattr(os, "sched_setaffinity"):
            # Its share of this machine's CPUs, as a Lambda sandbox has its share of a host:
            # the handler sizes its thread pools from what it may run on.
            with contextlib.suppress(OSError):  # exited already: invoke reports it
                os.sched_setaffinity(self.proc.pid, set(self.cpus))
        log.info("%s: worker %d starting (cpus %s)", self.spec.name, self.proc.pid,
                 ",".join(map(str, self.cpus)) or "all")

    def invoke(self, payload: bytes) -> InvokeResult:
        started = time.monotonic()
        cold = self.proc is None
        if cold:
            self.start()
        assert self.api is not None and self.proc is not None
        invocation = Invocation(request_id=str(uuid.uuid4()), payload=payload,
                                 function_arn=self.spec.arn, timeout_s=self.spec.timeout_s)
        self.api.pending.put(invocation)
        error = self._watch(invocation, started)
        self.invocations += 1
        self.last_used = time.monotonic()
        if error is not None:
            invocation.finish(error, error=True)
        init_s = self.init_s if cold else None
        body = invocation.result if invocation.result is not None else b"null"
        result = InvokeResult(payload=body, function_error="Unhandled" if invocation.error
                              else None, request_id=invocation.request_id,
                              duration_s=time.monotonic() - started, init_s=init_s,
                              pid=self.proc.pid, max_memory_mb=self.peak_rss >> 20,
                              function=self.spec.name, cpus=len(self.cpus))
        # Lambda's REPORT line (shown with `imgpipe local -v`).
        log.info("%s: REPORT RequestId: %s Duration: %.2f ms%s Memory Size: %d MB "
                 "Max Memory Used: %d MB%s", self.spec.name, result.request_id,
                 1000 * (result.duration_s - (init_s or 0.0)),
                 f" Init Duration: {1000 * init_s:.2f} ms" if init_s is not None else "",
                 self.spec.memory_mb, result.max_memory_mb,
                 " Status: error" if result.function_error else "")
        return result

    def _watch(self, invocation: Invocation, queued_at: float) -> bytes | None:
        """Wait for the answer while enforcing Lambda's limits; the error to report when
        the worker had to be killed or died."""
        assert self.api is not None and self.proc is not None
        limit_bytes = self.spec.memory_mb * 1024 * 1024
        rid = invocation.request_id
        while not invocation.done.wait(_WATCH_INTERVAL_S):
            now = time.monotonic()
            if self.init_s is None and self.api.ready.is_set():
                self._initialised(now)
            if self.proc.poll() is not None:
                if self.init_s is None:  # died during init: that was its cold start
                    self.init_s = now - self.started_at
                return self._exit_error(rid)
            if invocation.taken_at is None:  # still in init (or a hung runtime)
                if now - queued_at > INIT_TIMEOUT_S + self.spec.timeout_s:
                    self.kill()
                    return _timed_out(rid, now - queued_at)
            elif now - invocation.taken_at > self.spec.timeout_s:
                self.kill()
                return _timed_out(rid, self.spec.timeout_s)
            rss = resident_bytes(self.proc.pid)
            self.peak_rss = max(self.peak_rss, rss or 0)
            if rss is not None and rss > limit_bytes:
                self.kill()
                log.warning("%s: worker %d used %d MB of its %d MB: killed", self.spec.name,
                            self.proc.pid, rss >> 20, self.spec.memory_mb)
                return lambda_error("Runtime.OutOfMemory", f"RequestId: {rid} Error: Runtime "
                                    f"exited with error: signal: killed")
        if self.init_s is None:
            self._initialised(time.monotonic())
        return None

    def _initialised(self, now: float) -> None:
        assert self.proc is not None
        self.init_s = now - self.started_at
        log.info("%s: worker %d ready, cold start %.2f s", self.spec.name, self.proc.pid,
                 self.init_s)

    def _exit_error(self, rid: str) -> bytes:
        assert self.api is not None and self.proc is not None
        if self.api.init_error is not None:
            return self.api.init_error  # what the runtime posted, as Lambda returns it
        code = self.proc.returncode
        how = f"signal: {signal.Signals(-code).name.lower().removeprefix('sig')}" \
            if code < 0 else f"exit status {code}"
        return lambda_error("Runtime.ExitError",
                            f"RequestId: {rid} Error: Runtime exited with error: {how}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):  # pragma: no cover - raced its exit
                self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        self.kill()
        if self.api is not None:
            self.api.close()


def _timed_out(rid: str, seconds: float) -> bytes:
    return lambda_error("Sandbox.Timedout",
                        f"RequestId: {rid} Error: Task timed out after {seconds:.2f} seconds")


def worker_environment(spec: FunctionSpec, runtime_api: str,
                       extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What Lambda sets in an execution environment, then the function's own variables.
    Nothing of this process's environment leaks in but PATH (and no ~/.aws files)."""
    root = str(spec.code_root)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    day = time.strftime("%Y/%m/%d", time.gmtime())
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "_HANDLER": spec.handler,
        "LAMBDA_TASK_ROOT": root,
        "LAMBDA_RUNTIME_DIR": str(Path(spec.python).parent),
        "PYTHONPATH": root,
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{version}",
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"{day}/[$LATEST]{uuid.uuid4().hex}",
        "AWS_REGION": spec.region,
        "AWS_DEFAULT_REGION": spec.region,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    env.update(spec.environment)
    for key, value in (extra or {}).items():
        env[key] = (value + os.pathsep + env["PYTHONPATH"]) if key == "PYTHONPATH" else value
    return env


def resident_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc; None where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------- a function's workers


def cpu_shares(workers: int, cpus: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Each worker's CPUs: an equal share of the machine's, whole CPUs, or all of them for a
    single worker (more workers than CPUs share them round-robin)."""
    if cpus is None:
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux: no pinning
            return [() for _ in range(workers)]
    n = len(cpus)
    per = max(1, n // max(1, workers))
    return [tuple(cpus[(k * per + i) % n] for i in range(per)) for k in range(workers)]


class FunctionPool:
    """Up to `max_workers` warm execution environments of one function."""

    def __init__(self, spec: FunctionSpec, max_workers: int = 1, *, keep_warm_s: float = 120.0,
                 extra_env: Mapping[str, str] | None = None,
                 on_result: Callable[[InvokeResult], None] | None = None) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.spec = spec
        self.max_workers = max_workers
        self.keep_warm_s = keep_warm_s
        self.extra_env = dict(extra_env or {})
        self.on_result = on_result
        self._shares = cpu_shares(max_workers)
        self._slots: list[Worker | None] = [None] * max_workers
        self._idle: list[int] = []
        self._cond = threading.Condition()
        self._closed = False
        self._reaper = threading.Thread(target=self._reap, name=f"reap-{spec.name}",
                                        daemon=True)
        self._reaper.start()

    def invoke(self, payload: bytes) -> InvokeResult:
        slot = self._acquire()
        worker = self._slots[slot]
        assert worker is not None
        try:
            result = worker.invoke(payload)
        finally:
            self._release(slot)
        if self.on_result is not None:
            self.on_result(result)
        return result

    @property
    def workers(self) -> list[Worker]:
        with self._cond:
            return [w for w in self._slots if w is not None]

    def _acquire(self) -> int:
        with self._cond:
            while True:
                if self._closed:
                    raise PoolStopped(f"{self.spec.name}: the local stack is stopping")
                while self._idle:
                    slot = self._idle.pop()  # the most recently used: warmest
                    worker = self._slots[slot]
                    if worker is not None and worker.alive:
                        return slot
                    if worker is not None:  # exited while idle: replaced below
                        worker.stop()
                        self._slots[slot] = None
                free = [i for i, w in enumerate(self._slots) if w is None]
                if free:
                    self._slots[free[0]] = Worker(self.spec, self._shares[free[0]],
                                                  self.extra_env)
                    return free[0]
                self._cond.wait()

    def _release(self, slot: int) -> None:
        with self._cond:
            if self._closed:
                return
            worker = self._slots[slot]
            if worker is not None and not worker.alive:
                worker.stop()
                self._slots[slot] = None  # dead environments are replaced on demand
            else:
                self._idle.append(slot)
            # every waiter: the reaper waits on the same condition, and a wake-up it took
            # would leave a caller asleep beside a free worker
            self._cond.notify_all()

    def _reap(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                self._stop_idle(self.keep_warm_s)
                self._cond.wait(min(1.0, self.keep_warm_s))

    def stop_idle(self) -> None:
        """Stop every idle worker now (the next invocations start cold), as Lambda may
        retire an idle execution environment at any time."""
        with self._cond:
            self._stop_idle(0.0)

    def resize(self, max_workers: int, cpus: Sequence[int] | None = None) -> None:
        """From now on up to `max_workers`, sharing `cpus` (default: every CPU this process
        may use); the idle workers stop (the next invocations start cold). For measuring
        one worker on a CPU of its own (`imgpipe bench`'s billed duration). Refused while a
        worker is busy."""
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        with self._cond:
            busy = [w for i, w in enumerate(self._slots) if w is not None
                    and i not in self._idle]
            if busy:
                raise RuntimeError(f"{self.spec.name}: {len(busy)} worker(s) busy")
            self._stop_idle(0.0)
            self.max_workers = max_workers
            self._shares = cpu_shares(max_workers, cpus)
            self._slots = [None] * max_workers
            self._idle = []
            self._cond.notify_all()

    def _stop_idle(self, idle_s: float) -> None:
        now = time.monotonic()
        for slot in list(self._idle):
            worker = self._slots[slot]
            if worker is not None and now - worker.last_used >= idle_s:
                self._idle.remove(slot)
                self._slots[slot] = None
                log.info("%s: worker %s idle for %.0f s, stopped", self.spec.name,
                         worker.proc.pid if worker.proc else "?", now - worker.last_used)
                worker.stop()
                self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            workers = [w for w in self._slots if w is not None]
            self._slots = [None] * self.max_workers
            self._idle = []
            self._cond.notify_all()
        for worker in workers:
            worker.stop()
