"""What the Lambda package holds: the functions' code and model, dependencies for the
target architecture only, nothing of the repository's tooling, under Lambda's size limit."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.lambda_deps import LOCK_FILE, MACHINES, RUNTIME
from tools.lambda_package import (
    UNZIPPED_LIMIT,
    elf_files,
    elf_machine,
    model_files,
    tree_size,
    web_files,
)

from .conftest import ROOT

SIZE_BUDGET = 250_000_000  # bytes unzipped: headroom under Lambda's 262,144,000
# Every top-level folder of the repository's own code that could end up in a package.
FIRST_PARTY = {"handlers", "pipeline", "imgpipe", "tools", "tests", "model", "web", "bench",
               "infra", "samples", "docs"}


def first_party_files(package_root: Path) -> set[str]:
    return {p.relative_to(package_root).as_posix() for top in FIRST_PARTY
            for p in (package_root / top).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_size_is_under_the_budget(package: Callable[[str], Path]) -> None:
    root = package("x86_64")
    size = tree_size(root)
    zipped = (root.parent / "x86_64.zip").stat().st_size
    print(f"\nx86_64 package: {size:,} bytes unzipped ({size / 1e6:.1f} MB), "
          f"{zipped / 1e6:.1f} MB zipped; Lambda's limit {UNZIPPED_LIMIT:,}")
    assert size < SIZE_BUDGET


def test_the_runtime_core_ships_whole_and_nothing_else(package: Callable[[str], Path]) -> None:
    """Every Python file under pipeline/ and handlers/ is in the full package, and no other
    code of the repository is (the folder tells where code runs)."""
    root = package("x86_64")
    shipped = first_party_files(root)
    core = {p.relative_to(ROOT).as_posix() for top in ("pipeline", "handlers")
            for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}
    assert core <= shipped, sorted(core - shipped)
    expected = core | {p.as_posix() for p in [*model_files(), *web_files()]}
    assert shipped == expected, sorted(shipped ^ expected)
    modules = {p.removesuffix(".py").replace("/", ".") for p in shipped if p.endswith(".py")}
    # the core the handlers run, and none of the tooling around it
    assert {"pipeline.factory", "pipeline.service", "pipeline.classifier", "pipeline.aws",
            "pipeline.backfill", "handlers.ingest", "handlers.backfill"} <= modules
    for tooling in ("imgpipe.local", "imgpipe.commands", "imgpipe.bench", "imgpipe.cli",
                    "imgpipe.reconcile", "imgpipe.redrive"):
        assert not any(m == tooling or m.startswith(tooling + ".") for m in modules), tooling
    assert {"model/manifest.json", "model/labels.txt", "model/efficientnet_lite0.onnx"} <= shipped
    assert not any(p.startswith("model/reference/") or p.endswith(".md") or p == "model/export.py"
                   for p in shipped)


def test_nothing_of_the_repository_tooling(package: Callable[[str], Path]) -> None:
    root = package("x86_64")
    top = {p.name for p in root.iterdir()}
    for name in ("tests", "bench", "samples", "tools", "infra", "build", ".venv", ".venv-runtime",
                 ".venv-export", "Makefile", "pyproject.toml", "README.md", ".git", "bin",
                 "requirements-lambda.txt"):
        assert name not in top, name
    caches = {".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "out"}
    assert not [p for p in root.rglob("*") if p.name in caches and p.is_dir()]
    assert not list(root.rglob("pyvenv.cfg"))


def test_byte_code_is_for_the_runtime_and_needs_no_source_check(
        package: Callable[[str], Path]) -> None:
    """/var/task is read-only: byte code must be there already, valid whatever the files'
    times after unzipping (unchecked hash-based .pyc, PEP 552)."""
    root = package("x86_64")
    pycs = list(root.rglob("*.pyc"))
    assert {p.name.split(".")[-2] for p in pycs} == {"cpython-312"}
    for pyc in [*(root / "handlers").rglob("*.pyc"), *pycs[:200]]:
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 0b01, f"{pyc}: flags {flags:#b}, want hash-based and unchecked"
    assert (root / "handlers" / "__pycache__" / "ingest.cpython-312.pyc").is_file()


def test_zip_holds_the_same_files(package: Callable[[str], Path]) -> None:
    root = package("x86_64")
    with zipfile.ZipFile(root.parent / "x86_64.zip") as zf:
        names = {i.filename for i in zf.infolist() if not i.is_dir()}
        modes = {(i.external_attr >> 16) & 0o444 for i in zf.infolist()}
    assert names == {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert modes == {0o444}  # every file readable by Lambda's user


@pytest.mark.parametrize("arch", sorted(MACHINES))
def test_package_says_what_it_was_built_for(arch: str, package: Callable[[str], Path]) -> None:
    info = json.loads((package(arch) / "imgpipe-package.json").read_text())
    assert info["architecture"] == arch and info["runtime"] == RUNTIME
    assert info["requirements_sha256"] == hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", sorted(MACHINES))
def test_binaries_are_for_the_target_architecture_only(
        arch: str, package: Callable[[str], Path]) -> None:
    root = package(arch)
    machines = Counter(elf_files(root).values())
    print(f"\n{arch} package: {tree_size(root) / 1e6:.1f} MB unzipped, "
          f"{(root.parent / f'{arch}.zip').stat().st_size / 1e6:.1f} MB zipped, "
          f"ELF files by architecture: {dict(machines)}")
    assert set(machines) == {arch}
    capi = [p for p in elf_files(root) if p.parts[:2] == ("onnxruntime", "capi")]
    assert capi, "onnxruntime's native library is missing"


def test_elf_reader_knows_this_machine() -> None:
    """The reader behind the architecture checks, on a binary whose architecture is known:
    the interpreter running this test."""
    machine = platform.machine().lower()
    expected = {v: k for k, v in MACHINES.items()}.get(machine)
    if expected is None:
        pytest.fail(f"no Lambda architecture for this machine ({machine})")
    assert elf_machine(Path(sys.executable).resolve()) == expected
    assert elf_machine(ROOT / "pyproject.toml") is None
