"""End-to-end fixtures: `imgpipe local` as a subprocess, driven with the real aws CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.iam_calls import check_calls, summary

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalProcess:
    proc: subprocess.Popen[str]
    port: int
    env: dict[str, str]
    output: list[str]
    calls: Path | None = None  # every AWS call the functions made (--record-calls)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def aws(self, *args: str, check: bool = True) -> Any:
        """Run the real aws CLI against the stack; parse JSON output when there is some."""
        cmd = [str(BIN / "aws"), *args]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        out = done.stdout.strip()
        if out.startswith(("{", "[")):
            return json.loads(out)
        return out

    def wait_for_item(self, table: str, image: str, model: str, timeout_s: float = 90,
                      until: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The item of (image, model), once it exists (and satisfies `until`, if given)."""
        deadline = time.monotonic() + timeout_s
        key = json.dumps({"image": {"S": image}, "model": {"S": model}})
        while time.monotonic() < deadline:
            resp = self.aws("dynamodb", "get-item", "--table-name", table, "--key", key,
                            "--consistent-read")
            if isinstance(resp, dict) and "Item" in resp and (
                    until is None or until(resp["Item"])):
                return resp["Item"]  # type: ignore[no-any-return]
            self.assert_alive()
            time.sleep(0.5)
        raise AssertionError(f"no item for {image} after {timeout_s} s; stack output:\n"
                             + "".join(self.output[-40:]))

    def wait_for_output(self, condition: Callable[[], bool], timeout_s: float = 90) -> None:
        """Until `condition()` holds for the stack's output (read by a thread)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("the stack's output did not show it after "
                                     f"{timeout_s} s:\n" + "".join(self.output[-40:]))
            self.assert_alive()
            time.sleep(0.2)

    def assert_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError("imgpipe local exited:\n" + "".join(self.output))


def start_local(home: Path, *args: str, port: int | None = None) -> LocalProcess:
    """`imgpipe local ARGS` as a subprocess, once its banner says it is up."""
    port = port or _free_port()
    env = {
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "HOME": str(home),  # no ~/.aws config of the person running the tests
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        # as the banner's export lines: without it aws CLI v1 sends `aws sqs` to AWS
        "AWS_CONFIG_FILE": str(ROOT / "imgpipe" / "local" / "awscli.cfg"),
        "AWS_PAGER": "",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),  # this tree's code, whichever checkout installed imgpipe
    }
    if "--api-port" not in args:  # any free port, not the emulator's + 1
        args = (*args, "--api-port", "0")
    # one log a start (a restarted stack deploys its functions anew), checked by stop_local
    calls = home / f"aws-calls-{port}-{time.monotonic_ns()}.jsonl"
    if "--record-calls" not in args:
        args = (*args, "--record-calls", str(calls))
    proc = subprocess.Popen(
        [str(BIN / "imgpipe"), "local", "--port", str(port), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        output.append(line)
        if "Ctrl-C stops it" in line:
            break
    else:
        proc.kill()
        raise AssertionError("imgpipe local did not come up:\n" + "".join(output))
    if proc.poll() is not None:
        raise AssertionError("imgpipe local exited:\n" + "".join(output))

    import threading

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return LocalProcess(proc=proc, port=port, env=env, output=output,
                        calls=calls if str(calls) in args else None)


def stop_local(lp: LocalProcess) -> None:
    """SIGTERM, as Ctrl-C would: the stack must stop cleanly and say so. Before that, every
    AWS call the functions made is checked against their roles' policies as deployed (the
    emulator enforces no IAM; tests/iam_calls.py): a call AWS would deny fails the test."""
    problems: list[str] = []
    if lp.calls is not None and lp.proc.poll() is None:
        problems = check_calls(lp.endpoint, lp.calls)
    lp.proc.send_signal(signal.SIGTERM)
    try:
        lp.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        lp.proc.kill()
        raise AssertionError("imgpipe local did not stop on SIGTERM") from None
    assert lp.proc.returncode == 0, "".join(lp.output[-30:])
    assert any("stopped" in line for line in lp.output)
    assert not problems, summary(problems)


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcess]:
    lp = start_local(tmp_path_factory.mktemp("home"))
    yield lp
    stop_local(lp)
