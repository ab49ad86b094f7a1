"""A deploy uploads the big package once: builds are reproducible, so the three functions
that classify (one `sam build` directory each) get byte-identical packages, and `sam deploy`,
which names each upload by a checksum of the directory's files and skips a name the bucket
already has, uploads one. The summary function gets the lean package.

Sizes (measured by these builds) are in docs/deploy.md, "The package"."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from imgpipe.local.provision import DEFAULT_TEMPLATE, load_sam_template
from tools.lambda_package import (
    CODE_DIR,
    CONTENTS,
    SAM_FUNCTIONS,
    tree_digest,
    tree_size,
    write_zip,
)

from .conftest import HOST_ARCH, ROOT, make


def sam_build(function: str, artifacts_dir: Path) -> Path:
    """What `sam build` runs for `function` (BuildMethod: makefile): the Makefile's
    build-<Function> target with an ARTIFACTS_DIR of its own."""
    artifacts_dir.mkdir(parents=True)
    make(f"build-{function}", f"ARTIFACTS_DIR={artifacts_dir}")
    return artifacts_dir


@pytest.mark.parametrize(("function", "kind"), [("BackfillFunction", "full"),
                                                ("SummaryFunction", "lean")])
def test_a_build_elsewhere_gives_the_same_bytes(
        function: str, kind: str, package: Callable[[str], Path], tmp_path: Path) -> None:
    """`make package` built build/package/<arch>[-lean]; `sam build` builds the same
    contents in .aws-sam/build/<Function>/ (another path, another length): same files, same
    bytes, same zip."""
    made = package(HOST_ARCH)
    if kind == "lean":
        made = made.with_name(f"{HOST_ARCH}-lean")
    other = sam_build(function, tmp_path / "elsewhere" / ".aws-sam" / "build" / function)
    assert tree_digest(other) == tree_digest(made)
    zipped = write_zip(other, tmp_path / "other.zip")
    made_zip = made.with_suffix(".zip")
    assert (tmp_path / "other.zip").read_bytes() == made_zip.read_bytes()
    stamp = json.loads(made.with_suffix(".json").read_text())
    print(f"\n{kind} {HOST_ARCH} package: {tree_size(made) / 1e6:.1f} MB unzipped, "
          f"{zipped / 1e6:.1f} MB zipped, tree sha256 {stamp['tree_sha256'][:12]}")
    # nothing names where it was built: byte code names its sources under /var/task
    for root in (made, other):
        needle = str(root).encode()
        stray = [p for p in root.rglob("*.pyc") if needle in p.read_bytes()]
        assert not stray, f"{len(stray)} .pyc files name {root}, e.g. {stray[:3]}"
    handler = made / "handlers" / "__pycache__" / "summary.cpython-312.pyc"
    assert f"{CODE_DIR}/handlers/summary.py".encode() in handler.read_bytes()


def test_each_function_gets_a_package_and_the_classifying_ones_share_one() -> None:
    sam = load_sam_template(DEFAULT_TEMPLATE)
    functions = {name: r["Properties"]["Handler"] for name, r in sam["Resources"].items()
                 if r["Type"] == "AWS::Serverless::Function"}
    assert set(SAM_FUNCTIONS) == set(functions)
    assert {n for n, kind in SAM_FUNCTIONS.items() if kind == "full"} == {
        "IngestFunction", "BackfillFunction", "ApiFunction"}
    lean = CONTENTS[SAM_FUNCTIONS["SummaryFunction"]]
    assert functions["SummaryFunction"].rpartition(".")[0] in lean.entries
    assert not lean.models and not lean.web


def test_a_function_the_packaging_does_not_know_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tools.lambda_package", "--sam-function",
                           "ResizeFunction", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "ResizeFunction is not in tools/lambda_package.py's SAM_FUNCTIONS" in done.stderr


LEFT_OUT = ("onnxruntime", "numpy", "numpy.libs", "PIL", "pillow.libs", "flatbuffers",
            "google", "packaging", "model", "web")


def test_the_summary_package_is_lean(lean_package: Callable[[str], Path]) -> None:
    root = lean_package(HOST_ARCH)
    top = {p.name for p in root.iterdir()}
    assert not top & set(LEFT_OUT), top & set(LEFT_OUT)
    assert not [p for p in top if p.startswith(("onnxruntime-", "numpy-", "pillow-",
                                                "protobuf-"))]
    assert not [p for p in root.rglob("*") if p.suffix in (".onnx", ".so")]
    assert {p.name for p in (root / "handlers").glob("*.py")} == {"__init__.py", "summary.py"}
    # imports under `if TYPE_CHECKING:` are not followed: no inference service
    assert not (root / "pipeline" / "service.py").exists()
    info = json.loads((root / "imgpipe-package.json").read_text())
    assert (info["architecture"], info["contents"]) == (HOST_ARCH, "lean")
    with zipfile.ZipFile(root.with_suffix(".zip")) as zf:
        assert {i.filename for i in zf.infolist()} == {
            p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert tree_size(root) < 50_000_000


def test_the_local_stack_runs_the_summary_from_the_lean_package(tmp_path: Path) -> None:
    """`imgpipe local --package build/package/<arch>` runs each function from the package it
    is deployed with: the summary from `<arch>-lean` beside it, when `make package` built
    it; the others (and the summary without a lean package) from the full one."""
    from imgpipe.local.stack import lean_package_for

    full = tmp_path / "x86_64"
    assert lean_package_for("handlers.summary.handler", full) is None
    lean = tmp_path / "x86_64-lean"
    (lean / "handlers").mkdir(parents=True)
    (lean / "handlers" / "summary.py").write_text("")
    assert lean_package_for("handlers.summary.handler", full) == lean
    assert lean_package_for("handlers.ingest.handler", full) is None
