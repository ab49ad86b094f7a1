"""Build the zip package of imgpipe's Lambda functions: one implementation for `sam build`
(the Makefile's `build-<Function>` targets) and `make package`.

The package root holds what the functions run and nothing else:
- the runtime core whole: every Python file under `handlers/` and `pipeline/` (the tooling,
  `imgpipe/`, never ships; tests/unit/test_import_contract.py keeps the core from importing
  it). The lean package holds a subset: the modules its one handler imports, traced from
  their import statements;
- the packaged models: each `model/**/manifest.json` with the ONNX and labels files it names,
  but for a folder marked `NOT-PACKAGED` (`model/efficientnet-lite2/`: published to S3 instead);
- the upload page (`web/`), which the API function serves;
- the pinned dependencies of `requirements-lambda.txt`, wheels for the target platform only;
- byte code for python3.12, compiled with unchecked hashes: `/var/task` is read-only, so
  without it every cold start would compile every module again.

Two contents (`CONTENTS`): `full` for the functions that classify (ingest, backfill, API),
and `lean` for the backfill's summary step, which reads JSON from S3 and needs neither the
models, the upload page, ONNX Runtime, numpy nor Pillow.

Builds are reproducible: the same sources, lock file and python3.12 give the same bytes
wherever the package is built. Byte code names its source as under `/var/task` (Lambda's
code directory; at import Python points it at the real file anyway) instead of the build
directory, and is compiled in one process with a fixed hash seed (the order of a frozenset
constant follows string hashes); the zip has sorted entries and fixed times and modes. So
`sam build`'s three full packages (one directory a function) have the same contents, and
`sam deploy` uploads them once: it names each upload by a checksum of the directory's
files and skips a name the bucket already holds.

    python3.12 -m tools.lambda_package --arch arm64 --out build/package/arm64 \\
        --zip build/package/arm64.zip
    python3.12 -m tools.lambda_package --arch arm64 --contents lean \\
        --out build/package/arm64-lean --zip build/package/arm64-lean.zip
    python3.12 -m tools.lambda_package --sam-function IngestFunction --out "$ARTIFACTS_DIR"
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.modelstore import NOT_PACKAGED
from tools.lambda_deps import (
    LOCK_FILE,
    MACHINES,
    ROOT,
    RUNTIME,
    canonical,
    check_arch,
    pip_install,
    read_lock,
    require_runtime_python,
)

# Lambda's limit for a function's unzipped code, layers included.
UNZIPPED_LIMIT = 262_144_000
ENTRY_PACKAGE = "handlers"
# The runtime core: the folders a full package holds whole, and all the lean one's tracer follows.
RUNTIME_PACKAGES = (ENTRY_PACKAGE, "pipeline")
PACKAGE_INFO = "imgpipe-package.json"  # read by handlers/__init__.py
ELF_MACHINES = {62: "x86_64", 183: "arm64"}  # ELF e_machine -> Lambda architecture
# Dependencies' own test suites (numpy's: 15 MB with byte code) never run in the function:
# they ship as the wheels have them, without byte code.
_NOT_RUN = re.compile(r"[/\\]tests[/\\]")
# The path byte code names its sources under: Lambda's code directory, whatever the build's.
CODE_DIR = "/var/task"


@dataclass(frozen=True)
class Contents:
    """What one kind of package holds."""

    name: str
    entries: tuple[str, ...]  # handler modules traced; empty: the runtime core whole
    models: bool  # the packaged models
    web: bool  # the upload page
    without: frozenset[str]  # pins of the lock file left out (canonical names)


# What only inference needs: ONNX Runtime and its own dependencies, numpy, Pillow.
INFERENCE_PINS = frozenset({"onnxruntime", "flatbuffers", "packaging", "protobuf", "numpy",
                            "pillow"})
CONTENTS = {
    "full": Contents("full", (), models=True, web=True, without=frozenset()),
    # the summary handler makes no X-Ray subsegments: no X-Ray SDK (powertools' tracer extra)
    "lean": Contents("lean", ("handlers.summary",), models=False, web=False,
                     without=INFERENCE_PINS | {"aws-xray-sdk", "wrapt"}),
}
# The package of each function of infra/template.yaml (a `sam build` of a function not
# named here stops with a message: a new function needs a decision).
SAM_FUNCTIONS = {"IngestFunction": "full", "BackfillFunction": "full", "ApiFunction": "full",
                 "SummaryFunction": "lean"}


# ---------------------------------------------------------------- what goes in


def module_file(root: Path, module: str) -> Path | None:
    """The source file of a first-party module, or None when it is not one of ours."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the statements inside `if TYPE_CHECKING:` blocks (never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _imported_modules(path: Path, module: str) -> Iterator[str]:
    """Every module an import statement of `path` may load, wherever the statement is
    (imports inside functions count: they run on some path), except under
    `if TYPE_CHECKING:`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    never_run = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in never_run:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def runtime_sources(root: Path = ROOT) -> list[Path]:
    """Every Python file of the runtime core (`RUNTIME_PACKAGES`), relative to `root`."""
    return sorted(p.relative_to(root) for top in RUNTIME_PACKAGES
                  for p in (root / top).rglob("*.py") if "__pycache__" not in p.parts)


def traced_sources(root: Path = ROOT, entries: Sequence[str] = ()) -> list[Path]:
    """The runtime core's files the handlers import (`entries`, or every module of
    handlers/), transitively, with their packages' `__init__.py`, relative to `root`."""
    entry = root / ENTRY_PACKAGE
    todo = list(entries) or [f"{ENTRY_PACKAGE}.{p.stem}" if p.name != "__init__.py"
                             else ENTRY_PACKAGE for p in sorted(entry.glob("*.py"))]
    ours = RUNTIME_PACKAGES
    seen: dict[str, Path] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_file(root, module)
        if path is None:
            continue
        seen[module] = path
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        todo += [m for m in _imported_modules(path, module) if m.split(".")[0] in ours]
    return sorted(p.relative_to(root) for p in seen.values())


def model_files(root: Path = ROOT) -> list[Path]:
    """Each packaged model: its manifest and the ONNX and labels files the manifest names.
    A folder holding `NOT-PACKAGED` is left out (pipeline/modelstore.py's packaged_models())."""
    files: list[Path] = []
    for manifest in sorted((root / "model").rglob("manifest.json")):
        if (manifest.parent / NOT_PACKAGED).exists():
            continue
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        named = [manifest] + [manifest.parent / doc[k] for k in ("file", "labels_file")
                              if doc.get(k)]
        for path in named:
            if not path.is_file():
                raise SystemExit(f"error: {manifest.relative_to(root)} names "
                                 f"{path.name}, which does not exist")
        files += [p.relative_to(root) for p in named]
    if not files:
        raise SystemExit("error: no model/**/manifest.json: the functions need a model")
    return files


def web_files(root: Path = ROOT) -> list[Path]:
    """The upload page's static files (the API function serves them)."""
    return sorted(p.relative_to(root) for p in (root / "web").glob("*") if p.is_file())


# ---------------------------------------------------------------- checks


def elf_machine(path: Path) -> str | None:
    """The architecture an ELF file is built for ("x86_64", "arm64", or the raw e_machine
    number), or None when the file is not ELF."""
    with path.open("rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return ELF_MACHINES.get(machine, str(machine))


def elf_files(root: Path) -> dict[Path, str]:
    """Every ELF file under `root` (shared objects, executables) -> its architecture."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            machine = elf_machine(path)
            if machine is not None:
                found[path.relative_to(root)] = machine
    return found


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def tree_digest(root: Path) -> str:
    """sha256 over the package's files (relative path and content, in sorted order): equal
    digests, equal packages. `sam deploy` names an upload by such a checksum (md5)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# ---------------------------------------------------------------- build


def fingerprint(arch: str, sources: Sequence[Path], root: Path = ROOT) -> str:
    """Changes when anything that goes into the package changes."""
    digest = hashlib.sha256(f"{arch} {sys.version}".encode())
    tools = sorted(p.relative_to(ROOT) for p in Path(__file__).parent.glob("*.py"))
    for path in [*tools, LOCK_FILE.relative_to(ROOT), *sources]:
        digest.update(str(path).encode() + b"\0" + (root / path).read_bytes())
    return digest.hexdigest()


def package_sources(contents: Contents, root: Path = ROOT) -> list[Path]:
    """The repository's files a package of `contents` holds, relative to `root`."""
    code = traced_sources(root, contents.entries) if contents.entries else runtime_sources(root)
    return [*code,
            *(model_files(root) if contents.models else []),
            *(web_files(root) if contents.web else [])]


def install_dependencies(arch: str, out: Path, without: frozenset[str] = frozenset()) -> None:
    lock = read_lock()
    with tempfile.TemporaryDirectory() as tmp:
        requirements = LOCK_FILE
        if without:  # the lock file's pins (with their hashes) less those left out
            kept = type(lock)(lock.source, tuple(p for p in lock.pins
                                                 if canonical(p.name) not in without))
            requirements = Path(tmp) / LOCK_FILE.name
            requirements.write_text(kept.render(), encoding="utf-8")
        pip_install(arch, "--no-deps", "--require-hashes", "--no-compile", "--target",
                    str(out), "-r", str(requirements))
    shutil.rmtree(out / "bin", ignore_errors=True)  # console scripts: nothing runs them


def compile_byte_code(out: Path) -> None:
    """Byte code for every module of `out` (not the dependencies' own tests), the same bytes
    wherever `out` is: sources named as under CODE_DIR, one process (files in sorted order)
    with a fixed hash seed."""
    cmd = [sys.executable, "-m", "compileall", "-q", "-j", "1", "-d", CODE_DIR,
           "-x", _NOT_RUN.pattern, "--invalidation-mode", "unchecked-hash", str(out)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("SOURCE_DATE_EPOCH", None)  # the invalidation mode is given; no mtime is used
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        raise SystemExit(f"error: byte-compiling {out} failed")


def build(arch: str, out: Path, root: Path = ROOT, contents: Contents = CONTENTS["full"]) -> int:
    """(Re)create the package root `out`; returns its unzipped size."""
    require_runtime_python()
    read_lock()  # a clear message when the lock file is missing
    if root.resolve().is_relative_to(out.resolve()):
        raise SystemExit(f"error: --out {out} holds the repository; it would be emptied")
    if out.exists():
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    install_dependencies(arch, out, contents.without)
    for rel in package_sources(contents, root):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, out / rel)
    # What it was built for: handlers/__init__.py refuses to start on another architecture.
    (out / PACKAGE_INFO).write_text(json.dumps({
        "architecture": arch, "runtime": RUNTIME, "contents": contents.name,
        "requirements_sha256": hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest(),
    }, indent=2) + "\n")
    compile_byte_code(out)
    return verify(arch, out)


def verify(arch: str, out: Path) -> int:
    """Fail when the package holds a shared object of another architecture or is over
    Lambda's size limit; returns its unzipped size."""
    foreign = {str(p): m for p, m in elf_files(out).items() if m != arch}
    if foreign:
        sample = ", ".join(f"{p} ({m})" for p, m in list(foreign.items())[:5])
        raise SystemExit(f"error: the {arch} package holds {len(foreign)} binaries of "
                         f"another architecture: {sample}")
    size = tree_size(out)
    if size > UNZIPPED_LIMIT:
        raise SystemExit(f"error: the package is {size:,} bytes unzipped; Lambda allows "
                         f"{UNZIPPED_LIMIT:,}")
    return size


def write_zip(src: Path, dest: Path) -> int:
    """A zip of `src`: sorted entries, fixed times (a file's time says nothing about the
    package), normalised modes (Lambda needs every file readable by all). Returns its size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(src).as_posix(), (1980, 1, 1, 0, 0, 0))
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with path.open("rb") as f, zf.open(info, "w") as w:
                shutil.copyfileobj(f, w, 1 << 20)
    tmp.replace(dest)
    return dest.stat().st_size


# ---------------------------------------------------------------- architecture under SAM


def sam_architecture(function: str, artifacts_dir: Path) -> tuple[str, str]:
    """(architecture, how it was learnt) of a function `sam build` is building.

    SAM CLI passes only ARTIFACTS_DIR to a makefile build (aws/aws-sam-cli#3349). Before it
    builds, it writes its build graph (each build definition with its architecture and
    functions) to build.toml, beside the build directory: that file says it. A container
    build (`--use-container`) has no such file, but runs in an image of the function's
    architecture, so the machine's architecture is the answer there.
    """
    graph = artifacts_dir.parent.parent / "build.toml"
    if graph.is_file():
        with graph.open("rb") as f:
            definitions = tomllib.load(f).get("function_build_definitions", {})
        for definition in definitions.values():
            if function in definition.get("functions", []) and "architecture" in definition:
                return check_arch(definition["architecture"]), f"SAM's {graph.name}"
    machine = platform.machine().lower()
    arch = {v: k for k, v in MACHINES.items()}.get(machine, machine)
    return check_arch(arch), f"this machine ({machine}): SAM wrote no build definition"


# ---------------------------------------------------------------- command line


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="the package root to (re)create")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", choices=sorted(MACHINES), help="target architecture")
    which.add_argument("--sam-function", metavar="LOGICAL_ID",
                       help="building for `sam build`: learn the architecture from SAM")
    parser.add_argument("--contents", choices=sorted(CONTENTS), default="full",
                        help="with --arch: full (the classifying functions) or lean (the "
                             "backfill summary); a --sam-function's comes from the function")
    parser.add_argument("--zip", type=Path, help="also write this zip of the package")
    args = parser.parse_args(argv)

    if args.sam_function:
        if args.sam_function not in SAM_FUNCTIONS:
            parser.error(f"{args.sam_function} is not in tools/lambda_package.py's "
                         f"SAM_FUNCTIONS: say there which package it gets (full or lean)")
        contents = CONTENTS[SAM_FUNCTIONS[args.sam_function]]
        arch, how = sam_architecture(args.sam_function, args.out)
        print(f"imgpipe: building {args.sam_function} ({contents.name} package) for {arch} "
              f"(from {how})", flush=True)
    else:
        arch, contents = args.arch, CONTENTS[args.contents]
    stamp = args.zip.with_suffix(".json") if args.zip else None
    key = fingerprint(f"{arch} {contents.name}", package_sources(contents))
    if stamp and stamp.is_file() and args.zip.is_file() and args.out.is_dir():
        previous = json.loads(stamp.read_text())
        if previous.get("fingerprint") == key:
            print(f"{args.out}: up to date ({arch}, {_mb(previous['unzipped_bytes'])} "
                  f"unzipped, {_mb(previous['zipped_bytes'])} zipped)")
            return 0
    size = build(arch, args.out, contents=contents)
    line = (f"{args.out}: {arch} {contents.name} package, {_mb(size)} unzipped "
            f"(limit {_mb(UNZIPPED_LIMIT)})")
    if args.zip and stamp:
        zipped = write_zip(args.out, args.zip)
        stamp.write_text(json.dumps({"fingerprint": key, "arch": arch,
                                     "contents": contents.name, "unzipped_bytes": size,
                                     "zipped_bytes": zipped, "tree_sha256": tree_digest(args.out)},
                                    indent=2) + "\n")
        line += f", {_mb(zipped)} zipped -> {args.zip}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
