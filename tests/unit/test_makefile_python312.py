"""`make test` says that python3.12 is missing before it does anything else (it used to
fail in the package tests, after minutes of other tests), and says how to get it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def _make(tmp_path: Path, *goals: str) -> subprocess.CompletedProcess[str]:
    """The Makefile (and pyproject.toml) in an empty folder, with a PATH and a HOME that
    hold no python3.12 and no pyenv; `-n` prints what would run instead of running it."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("uname", "awk", "grep"):
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path),
           "PYENV_ROOT": str(tmp_path / "no-pyenv")}
    return subprocess.run([str(MAKE), "-n", *goals], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_make_test_stops_first_when_python312_is_missing(tmp_path: Path) -> None:
    done = _make(tmp_path, "test")
    assert done.returncode == 2
    assert done.stdout == ""  # not even the venv's creation was planned
    message = " ".join(done.stderr.split())
    assert "python3.12 not found" in message
    for way in ("pyenv install 3.12", "Ubuntu 24.04", "sam build --use-container",
                "not Debian 12"):
        assert way in message, way


def test_the_targets_that_do_not_need_it_still_plan(tmp_path: Path) -> None:
    for goal in ("demo", "lint"):
        done = _make(tmp_path, goal)
        assert done.returncode == 0, done.stderr
        assert "python3.12" not in done.stderr
