"""The embedded stack: moto's server on 127.0.0.1, provisioned from infra/template.yaml,
with the ingest handler driven by a Lambda-like SQS poller.

    with LocalStack(port=4566) as stack:
        stack.resources.bucket  # "imgpipe-local"
        ...

Two processes: the emulator (`pipeline.local.emulator`, moto's server) in a child process
of its own, and everything that stands in for Lambda in this one: the ingest poller and
the function host that runs the backfill handler when Step Functions invokes it (moto
cannot run Lambda code without Docker). Stopping the stack stops the child; the child also
exits by itself if this process dies.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.classifier import available_cpus
from pipeline.errors import ConfigError, ImgpipeError
from pipeline.local.functions import FunctionHost
from pipeline.local.poller import BatchResult, SqsPoller
from pipeline.local.provision import (
    CREDENTIALS,
    LocalResources,
    local_session,
    moto_api,
    provision,
)
from pipeline.records import PredictionRecord

__all__ = ["LocalStack", "StackOptions", "local_session", "free_port"]

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class StackOptions:
    port: int = 4566
    host: str = "127.0.0.1"
    template: Path | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    model_source: str = ""
    log_level: str = "WARNING"  # the handler's Powertools log level
    retry_visibility_s: int | None = None  # None: the queue's visibility timeout, as on AWS
    poll: bool = True  # run the ingest poller
    state_dir: Path | None = None  # keep the emulator's data here across restarts


class LocalStack:
    def __init__(self, options: StackOptions | None = None,
                 on_batch: Callable[[BatchResult], None] | None = None) -> None:
        self.options = options or StackOptions()
        self.on_batch = on_batch
        self.endpoint_url = f"http://{self.options.host}:{self.options.port}"
        self._emulator: subprocess.Popen[bytes] | None = None
        self._functions: FunctionHost | None = None
        self.poller: SqsPoller | None = None
        self.resources: LocalResources | None = None
        self._saved_env: dict[str, str | None] = {}
        self.restored: dict[str, Any] | None = None  # what --state-dir brought back

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> LocalResources:
        host, port = self.options.host, self.options.port
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise ConfigError(f"the local stack only listens on loopback, not {host!r}")
        if _port_in_use(host, port):
            raise ConfigError(
                f"port {port} on {host} is already in use (another `imgpipe local`?); "
                f"stop it or pick another with --port"
            )
        try:
            return self._start(host, port)
        except BaseException:
            self.stop()
            raise

    def _start(self, host: str, port: int) -> LocalResources:
        self._functions = FunctionHost(region=REGION)
        self._emulator = _spawn_emulator(host, port, self._functions.start(),
                                         self.options.state_dir)
        _wait_until_listening(host, port, self._emulator)
        self._configure_emulator()
        resources = provision(
            self.endpoint_url,
            template_path=self.options.template,
            parameters=dict(self.options.parameters),
            region=REGION,
        )
        self.resources = resources
        if self.options.state_dir is not None:
            from pipeline.local.state import request_restore

            self.restored = request_restore(self.endpoint_url)
        self._set_env(self.handler_environment(resources))
        import handlers.backfill
        import handlers.ingest

        handlers.ingest._service = None  # a fresh container for this stack
        handlers.backfill._services.clear()
        self._functions.register(resources.backfill_function, handlers.backfill.handler,
                                 resources.function_timeout_s)
        if self.options.poll:
            self.poller = SqsPoller(
                self.client("sqs"),
                resources.queue_url,
                handlers.ingest.handler,
                function_name=resources.ingest_function,
                batch_size=resources.batch_size,
                batching_window_s=resources.batching_window_s,
                function_timeout_s=resources.function_timeout_s,
                region=REGION,
                retry_visibility_s=self.options.retry_visibility_s,
                on_batch=self.on_batch,
                # Lambda runs up to MaximumConcurrency batches at once; here they share
                # this machine's CPUs, so no more than there are.
                concurrency=max(1, min(resources.max_concurrency, available_cpus())),
            )
            self.poller.start()
        return resources

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop()
            self.poller = None
        if self._emulator is not None:
            _stop_process(self._emulator)
            self._emulator = None
        if self._functions is not None:
            self._functions.stop()
            self._functions = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- helpers -----------------------------------------------------------------------

    def client(self, service: str) -> Any:
        return local_session(REGION).client(service, endpoint_url=self.endpoint_url)

    def handler_environment(self, r: LocalResources) -> dict[str, str]:
        """What Lambda would set for the ingest function, pointed at the emulator."""
        env = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": self.options.log_level,
            "POWERTOOLS_SERVICE_NAME": "imgpipe",
        }
        env.update(r.function_environment)
        env["IMGPIPE_MODEL"] = self.options.model_source or env.get("IMGPIPE_MODEL", "")
        return env

    def export_lines(self) -> list[str]:
        return [
            f"export AWS_ENDPOINT_URL={self.endpoint_url}",
            "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test",
            f"export AWS_DEFAULT_REGION={REGION}",
        ]

    def wait_for_records(
        self, images: Iterable[str], model: str, timeout_s: float = 60.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, PredictionRecord]:
        """Poll the table until every `s3://...` image has an item for `model`.

        One BatchGetItem per 100 missing images every half second: the emulator shares
        the CPUs with the pipeline it is watching.
        """
        from pipeline.aws import DynamoResultSink

        assert self.resources is not None
        sink = DynamoResultSink(self.client("dynamodb"), self.resources.table)
        wanted = list(dict.fromkeys(images))
        found: dict[str, PredictionRecord] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [image for image in wanted if image not in found]
            for (image, _), record in sink.get_many((i, model) for i in missing).items():
                found[image] = record
            if progress:
                progress(len(found), len(wanted))
            if len(found) == len(wanted):
                return found
            if time.monotonic() > deadline:
                missing = [w for w in wanted if w not in found]
                raise ImgpipeError(
                    f"timed out after {timeout_s:.0f} s waiting for {len(missing)} record(s): "
                    + ", ".join(missing[:5])
                )
            time.sleep(0.5)

    def _configure_emulator(self) -> None:
        moto_api(self.endpoint_url, "config", {"stepfunctions": {"execute_state_machine": True}})

    def _set_env(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            if key not in self._saved_env:
                self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _spawn_emulator(host: str, port: int, functions_url: str,
                    state_dir: Path | None = None) -> subprocess.Popen[bytes]:
    import pipeline

    # Importable however imgpipe was installed (or run from a checkout).
    root = str(Path(pipeline.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    state = ["--state-dir", str(state_dir)] if state_dir is not None else []
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.local.emulator", "--host", host, "--port", str(port),
         "--functions", functions_url, "--parent-pid", str(os.getpid()), *state],
        env=env, stdin=subprocess.DEVNULL,
    )


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_listening(host: str, port: int, proc: subprocess.Popen[bytes],
                          timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not _port_in_use(host, port):
        if proc.poll() is not None:
            raise ImgpipeError(f"the emulator exited with status {proc.returncode} before it "
                               f"listened on {host}:{port} (its error is printed above)")
        if time.monotonic() > deadline:
            raise ImgpipeError(f"the emulator did not start listening on {host}:{port} "
                               f"within {timeout_s:.0f} s")
        time.sleep(0.05)
