"""The Lambda package as `make package` builds it, and `.venv-runtime` (python3.12 with only
what the Lambda runtime gives), both made once per session through the Makefile: the same
commands a person runs. A rebuild is skipped when nothing that goes into the package
changed (tools/lambda_package.py keeps a fingerprint beside the zip)."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "build" / "package"
RUNTIME_PYTHON = ROOT / ".venv-runtime" / "bin" / "python"
# The package whose handlers can run on this machine.
HOST_ARCH = "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"


def make(*targets: str) -> str:
    """Run `make` in the repository; a failure shows make's own message (e.g. python3.12
    not found) as the test's error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    done = subprocess.run(["make", "-s", "--no-print-directory", *targets], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        pytest.fail(f"make {' '.join(targets)} failed ({done.returncode}):\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
    return done.stdout


@pytest.fixture(scope="session")
def runtime_python() -> Path:
    make("runtime-venv")
    return RUNTIME_PYTHON


_built: dict[str, Path] = {}


def build_package(arch: str) -> Path:
    if arch not in _built:
        print(make("package", f"ARCH={arch}").strip())
        _built[arch] = PACKAGE_DIR / arch
    return _built[arch]


@pytest.fixture(scope="session")
def package() -> Callable[[str], Path]:
    """`package("arm64")`: the unzipped package root for that architecture."""
    return build_package


@pytest.fixture(scope="session")
def lean_package() -> Callable[[str], Path]:
    """`lean_package("arm64")`: the summary function's package root (`make package` builds
    it beside the full one)."""
    def lean(arch: str) -> Path:
        return build_package(arch).with_name(f"{arch}-lean")
    return lean
