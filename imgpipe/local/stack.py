"""The embedded stack: moto's server on 127.0.0.1, provisioned from infra/template.yaml,
with the template's functions run as Lambda runs them.

    with LocalStack(StackOptions(port=4566)) as stack:
        stack.resources.bucket  # "imgpipe-local"
        ...

Processes: the emulator (`imgpipe.local.emulator`, moto's server) in a child process of
its own; in this one, the ingest poller (the event source mapping's part) and the function
host, which answers every Lambda invocation (the emulator forwards `aws lambda invoke` and
Step Functions' tasks to it) by handing it to the function's Runtime API workers
(`imgpipe.local.runtime`): one process per concurrent invocation, under awslambdaric,
with timeout and memory enforced. Workers run either the built package
(`StackOptions.package`, with `runtime_python`: what Lambda runs) or, by default, the
source tree with this interpreter (development mode). Stopping the stack stops the
workers and the emulator; the emulator also exits by itself if this process dies.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.config import Config

from imgpipe.local.frontdoor import FrontDoor
from imgpipe.local.functions import FunctionHost
from imgpipe.local.planner import make_planner
from imgpipe.local.poller import BatchResult, SqsPoller
from imgpipe.local.provision import (
    CREDENTIALS,
    LOCAL_PLANNER,
    DeployedFunction,
    LocalResources,
    local_session,
    moto_api,
    provision,
)
from imgpipe.local.runtime import FunctionPool, FunctionSpec, InvokeResult
from pipeline.classifier import available_cpus
from pipeline.errors import ConfigError, ImgpipeError
from pipeline.records import PredictionRecord

__all__ = ["LocalStack", "StackOptions", "local_session", "free_port", "SOURCE_ROOT"]

REGION = "us-east-1"
# The source tree: the code root of development mode (handlers/, pipeline/, model/).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


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
    log_level: str = "WARNING"  # the functions' Powertools log level
    retry_visibility_s: int | None = None  # None: the queue's visibility timeout, as on AWS
    poll: bool = True  # run the ingest poller
    state_dir: Path | None = None  # keep the emulator's data here across restarts
    # The functions' code: a built package (the unzipped function root) run with
    # `runtime_python`, or None for the source tree run with this interpreter.
    package: Path | None = None
    runtime_python: str | None = None
    # Extra variables for every function (after the template's), e.g. a test's PYTHONPATH.
    function_env: Mapping[str, str] = field(default_factory=dict)
    keep_warm_s: float = 120.0  # idle workers stop after this long
    # A local override of the event source mapping's MaximumBatchingWindowInSeconds.
    batching_window_s: int | None = None
    # Record every AWS call the functions make, one JSON line a call, in this file
    # (imgpipe/local/call_recorder; tests/iam_calls.py checks them against the roles).
    call_log: Path | None = None
    # The HTTP API's function URL on 127.0.0.1 (0: any free port).
    api_port: int = 0
    latency: str = "none"  # AWS-like latency in the emulator: none, aws, or a table's file


class LocalStack:
    def __init__(self, options: StackOptions | None = None,
                 on_batch: Callable[[BatchResult], None] | None = None,
                 on_emulator_exit: Callable[[str], None] | None = None) -> None:
        self.options = options or StackOptions()
        self.on_batch = on_batch
        # Called (from a watcher thread) with one sentence if the emulator process dies
        # while the stack runs; the stack has then stopped its pollers.
        self.on_emulator_exit = on_emulator_exit
        self.emulator_failure: str | None = None
        self._stopping = threading.Event()
        self.endpoint_url = f"http://{self.options.host}:{self.options.port}"
        self._emulator: subprocess.Popen[bytes] | None = None
        self._functions: FunctionHost | None = None
        self._front_door: FrontDoor | None = None
        self.poller: SqsPoller | None = None
        self.resources: LocalResources | None = None
        self.restored: dict[str, Any] | None = None  # what --state-dir brought back
        self.invocations: list[InvokeResult] = []  # the latest 1,000, for the benchmark
        self._code: tuple[Path, str] | None = None  # (code root, interpreter) once started

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
        if self.options.api_port and _port_in_use(host, self.options.api_port):
            raise ConfigError(
                f"port {self.options.api_port} on {host} (the HTTP API's) is already in use; "
                f"pick another with --api-port (0: any free port)"
            )
        if self.options.state_dir is not None:
            from imgpipe.local.state import check_state_dir

            check_state_dir(self.options.state_dir)  # one sentence, before any process
        self._stopping.clear()
        try:
            resources = self._start(host, port)
        except BaseException:
            self.stop()
            raise
        assert self._emulator is not None
        threading.Thread(target=self._watch_emulator, args=(self._emulator,),
                         name="emulator-watch", daemon=True).start()
        return resources

    def _watch_emulator(self, emulator: subprocess.Popen[bytes]) -> None:
        """If the emulator dies, say so and stop the pollers (not "try again" for ever)."""
        status = emulator.wait()
        if self._stopping.is_set():
            return
        how = (f"was killed by {signal.Signals(-status).name}" if status < 0 and
               -status in signal.valid_signals() else f"exited with status {status}")
        kept = (f"; what was answered is kept in {self.options.state_dir}"
                if self.options.state_dir is not None else
                "; without --state-dir its data is gone")
        self.emulator_failure = (
            f"the emulator (process {emulator.pid}, every S3, SQS, DynamoDB and Step "
            f"Functions call of the stack) {how}: the stack cannot go on without it and "
            f"stops{kept}; start `imgpipe local` again")
        if self.poller is not None:
            self.poller.signal_stop()
        if self.on_emulator_exit is not None:
            self.on_emulator_exit(self.emulator_failure)

    def _start(self, host: str, port: int) -> LocalResources:
        code_root, python = self._code = self.code()
        self._functions = FunctionHost()
        self._emulator = _spawn_emulator(host, port, self._functions.start(),
                                         self.options.state_dir, self.options.latency)
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
            from imgpipe.local.state import request_restore

            self.restored = request_restore(self.endpoint_url)
        self._functions.register_local(LOCAL_PLANNER, make_planner(lambda: self.client("s3")))
        for deployed in resources.functions:
            self._functions.register_pool(FunctionPool(
                self.function_spec(deployed, code_root, python),
                max_workers=self.max_workers(deployed, resources),
                keep_warm_s=self.options.keep_warm_s,
                extra_env=self.options.function_env,
                on_result=self._on_invocation,
            ))
        if resources.api_function:
            self._front_door = self._open_front_door(resources.api_function)
        if self.options.poll:
            functions = self._functions
            ingest = resources.ingest_function

            def invoke_ingest(event: dict[str, Any], _context: Any) -> Any:
                return functions.call(ingest, event)

            window = self.options.batching_window_s
            self.poller = SqsPoller(
                self.client("sqs", attempts=10),  # rides out refusals, as Lambda's poller
                resources.queue_url,
                invoke_ingest,
                function_name=ingest,
                batch_size=resources.batch_size,
                batching_window_s=resources.batching_window_s if window is None else window,
                function_timeout_s=resources.function_timeout_s,
                region=REGION,
                retry_visibility_s=self.options.retry_visibility_s,
                on_batch=self.on_batch,
                # One poller per worker the ingest function may have.
                concurrency=self.max_workers(resources.function(ingest), resources),
            )
            self.poller.start()
        return resources

    def stop(self) -> None:
        self._stopping.set()
        if self._front_door is not None:
            self._front_door.stop()
            self._front_door = None
        if self.poller is not None:
            self.poller.signal_stop()
        if self._functions is not None:
            # Kills the workers: an invocation in flight fails now, its messages stay in
            # the queue, and the pollers are not kept waiting for a long function.
            self._functions.stop()
            self._functions = None
        if self.poller is not None:  # without an emulator its retries would be waited out
            self.poller.stop(timeout=0.0 if self.emulator_failure else 30.0)
            self.poller = None
        if self._emulator is not None:
            _stop_process(self._emulator)
            self._emulator = None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the functions -----------------------------------------------------------------

    def _open_front_door(self, function: str) -> FrontDoor:
        """The API function's URL on 127.0.0.1, with the CORS the template gave it."""
        functions = self._functions
        assert functions is not None
        config = self.client("lambda").get_function_url_config(FunctionName=function)

        def invoke(body: bytes) -> tuple[int, bytes, str | None]:
            return functions.invoke(function, body)

        door = FrontDoor(invoke, cors=config.get("Cors"), host=self.options.host,
                         port=self.options.api_port)
        door.start()
        return door

    @property
    def api_url(self) -> str | None:
        """The HTTP API (and the upload page at its root), once started."""
        return self._front_door.url if self._front_door is not None else None

    def code(self) -> tuple[Path, str]:
        """(code root, interpreter) of the functions' workers."""
        package, python = self.options.package, self.options.runtime_python
        if package is None:
            python = python or sys.executable
            _require_runtime_client(python)
            return SOURCE_ROOT, python
        if not (package / "handlers").is_dir():
            raise ConfigError(f"{package} is not a built function package (no handlers/ in "
                              f"it): run `make package` first")
        if not python or not Path(python).exists():
            raise ConfigError(f"the runtime interpreter {python or '(none)'} does not exist: "
                              f"run `make runtime-venv` first")
        _require_runtime_client(python)
        return package, python

    @property
    def mode(self) -> str:
        """One line for the banner: what the functions' workers run."""
        root, python = self._code or self.code()
        if self.options.package is None:
            return f"development mode: the source tree {root} with {python}"
        return f"the package {root} with {python}"

    def function_spec(self, deployed: DeployedFunction, code_root: Path,
                      python: str) -> FunctionSpec:
        if self.options.package is not None:
            code_root = lean_package_for(deployed.handler, code_root) or code_root
        environment = self.function_environment(deployed.environment)
        if self.options.call_log is not None:
            environment["IMGPIPE_LOCAL_CALL_LOG"] = str(self.options.call_log)
            environment["PYTHONPATH"] = os.pathsep.join((str(code_root), str(CALL_RECORDER)))
        return FunctionSpec(name=deployed.name, handler=deployed.handler, code_root=code_root,
                            timeout_s=deployed.timeout_s, memory_mb=deployed.memory_mb,
                            environment=environment,
                            python=python, region=REGION)

    def function_environment(self, template_env: Mapping[str, str]) -> dict[str, str]:
        """A function's variables from the template, pointed at the emulator, with the
        emulator's test credentials (Lambda would give the role's)."""
        env = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": self.options.log_level,
            "POWERTOOLS_SERVICE_NAME": "imgpipe",
            # botocore's documented switches ("Data Integrity Protections for Amazon S3"): no
            # CRC over every photo read from the emulator; on AWS the defaults stay.
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }
        env.update(template_env)
        if "IMGPIPE_MODEL" in template_env and self.options.model_source:
            env["IMGPIPE_MODEL"] = self.options.model_source
        return env

    def max_workers(self, deployed: DeployedFunction, r: LocalResources) -> int:
        """Lambda's concurrency for the function (the event source mapping's
        MaximumConcurrency for ingest, the Map's MaxConcurrency for backfill), capped by
        this machine: one worker per CPU, and no more than its free memory holds at the
        function's MemorySize."""
        if deployed.name == r.ingest_function:
            wanted = r.max_concurrency
        elif deployed.name == r.backfill_function:
            wanted = int(r.parameters.get("BackfillMaxConcurrency") or 1)
        elif deployed.name == r.api_function:
            wanted = 2  # a page polls for results while a classify request runs
        else:
            wanted = 1
        return max(1, min(wanted, available_cpus(), _memory_mb() // deployed.memory_mb))

    @property
    def pools(self) -> dict[str, FunctionPool]:
        return self._functions.pools if self._functions is not None else {}

    def _on_invocation(self, result: InvokeResult) -> None:
        self.invocations.append(result)
        del self.invocations[:-1000]

    # ---- helpers -----------------------------------------------------------------------

    def client(self, service: str, attempts: int | None = None) -> Any:
        retries = {"mode": "standard", "max_attempts": attempts} if attempts else None
        return local_session(REGION).client(service, endpoint_url=self.endpoint_url,
                                            config=Config(retries=retries))

    def export_lines(self) -> list[str]:
        """What another terminal pastes to point the aws CLI and imgpipe at the stack. The
        config file loads the plugin without which aws CLI v1 sends `aws sqs` to AWS
        whatever AWS_ENDPOINT_URL says (`imgpipe.local.awscli_endpoints`)."""
        from imgpipe.local.awscli_endpoints import CONFIG_FILE

        lines = [
            f"export AWS_ENDPOINT_URL={self.endpoint_url}",
            "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test",
            f"export AWS_DEFAULT_REGION={REGION}",
            f"export AWS_CONFIG_FILE={shlex.quote(str(CONFIG_FILE))}",
        ]
        if self.api_url:
            lines.append(f"export IMGPIPE_API_URL={self.api_url}")
        return lines

    def wait_for_records(
        self, images: Iterable[str], model: str, timeout_s: float = 60.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, PredictionRecord]:
        """Wait until every `s3://...` image has an item for `model` (`wait_for_items`),
        then read the records."""
        from pipeline.table import PredictionsTable

        assert self.resources is not None
        wanted = self.wait_for_items(images, model, timeout_s, progress)
        sink = PredictionsTable(self.client("dynamodb"), self.resources.table)
        return {image: record for (image, _), record in
                sink.get_many((i, model) for i in wanted).items()}

    def wait_for_items(
        self, images: Iterable[str], model: str, timeout_s: float = 60.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Poll the table until every `s3://...` image has an item for `model`: one
        keys-only BatchGetItem per 100 missing images every half second (the emulator
        shares the CPUs with the pipeline it is watching)."""
        from pipeline.table import PredictionsTable

        assert self.resources is not None
        sink = PredictionsTable(self.client("dynamodb"), self.resources.table)
        wanted = list(dict.fromkeys(images))
        found: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [image for image in wanted if image not in found]
            found.update(image for image, _ in sink.present((i, model) for i in missing))
            if progress:
                progress(len(found), len(wanted))
            if len(found) == len(wanted):
                return wanted
            if time.monotonic() > deadline:
                missing = [w for w in wanted if w not in found]
                raise ImgpipeError(
                    f"timed out after {timeout_s:.0f} s waiting for {len(missing)} record(s): "
                    + ", ".join(missing[:5])
                )
            time.sleep(0.5)

    def _configure_emulator(self) -> None:
        moto_api(self.endpoint_url, "config", {"stepfunctions": {"execute_state_machine": True}})


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _spawn_emulator(host: str, port: int, functions_url: str, state_dir: Path | None = None,
                    latency: str = "none") -> subprocess.Popen[bytes]:
    import imgpipe

    # Importable however imgpipe was installed (or run from a checkout).
    root = str(Path(imgpipe.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    state = ["--state-dir", str(state_dir)] if state_dir is not None else []
    return subprocess.Popen(
        [sys.executable, "-m", "imgpipe.local.emulator", "--host", host, "--port", str(port),
         "--functions", functions_url, "--parent-pid", str(os.getpid()), "--latency", latency,
         *state], env=env, stdin=subprocess.DEVNULL)


# Its sitecustomize.py records the workers' AWS calls (StackOptions.call_log).
CALL_RECORDER = Path(__file__).resolve().parent / "call_recorder"


def lean_package_for(handler: str, package: Path) -> Path | None:
    """The lean package beside `package` (`<arch>-lean`) when it holds `handler`'s module,
    as the deployed summary function's code does; None otherwise."""
    lean = package.with_name(package.name + "-lean")
    module = handler.rpartition(".")[0]
    return lean if (lean / (module.replace(".", "/") + ".py")).is_file() else None


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


def _require_runtime_client(python: str) -> None:
    """The workers run `python -m awslambdaric`: say so at start, not on every invocation."""
    if python == sys.executable:
        import importlib.util

        found = importlib.util.find_spec("awslambdaric") is not None
    else:
        found = subprocess.run([python, "-c", "import awslambdaric"], capture_output=True,
                               timeout=60).returncode == 0
    if not found:
        raise ConfigError(f"{python} cannot import awslambdaric, the Lambda runtime client the "
                          f"function workers run: install imgpipe's `local` extra "
                          f"(pip install -e '.[local]'), or for --package run "
                          f"`make runtime-venv`")


def _memory_mb() -> int:
    """Memory this machine can give to workers (MemAvailable; plenty where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 1 << 20
