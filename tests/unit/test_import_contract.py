"""The import contract: the runtime core (`pipeline/`, `handlers/`: what ships to Lambda)
imports only itself, the standard library and the runtime dependencies of pyproject.toml;
never the tooling (`imgpipe/`: CLI, local stack, benchmark, report, cost) nor anything else.

Every import statement counts, wherever it is (inside a function, under `if TYPE_CHECKING:`):
the folder a file is in must tell where it runs."""

from __future__ import annotations

import ast
import re
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ("pipeline", "handlers")
# The import names of pyproject.toml's runtime dependencies (a distribution -> its modules;
# boto3 brings botocore, which the core configures directly).
IMPORT_NAMES = {
    "onnxruntime": {"onnxruntime"},
    "numpy": {"numpy"},
    "pillow": {"PIL"},
    "boto3": {"boto3", "botocore"},
    "aws-lambda-powertools": {"aws_lambda_powertools"},
}


def runtime_dependencies(root: Path = ROOT) -> set[str]:
    """pyproject.toml's [project] dependencies, by distribution name (lowercase)."""
    with (root / "pyproject.toml").open("rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    return {re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower() for d in dependencies}


def allowed_modules(root: Path = ROOT) -> set[str]:
    deps = runtime_dependencies(root)
    unknown = deps - IMPORT_NAMES.keys()
    assert not unknown, (f"a new runtime dependency {sorted(unknown)}: add its import names to "
                         "IMPORT_NAMES in tests/unit/test_import_contract.py")
    return {*CORE, *sys.stdlib_module_names, "__future__",
            *(name for d in deps for name in IMPORT_NAMES[d])}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import statement in `path`; relative
    imports stay inside their package, so inside the core."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(root: Path = ROOT) -> list[str]:
    """A sentence for each import of the core that breaks the contract."""
    allowed = allowed_modules(root)
    problems = []
    for top in CORE:
        for path in sorted((root / top).rglob("*.py")):
            for line, module in imports_of(path):
                if module not in allowed:
                    where = path.relative_to(root).as_posix()
                    what = ("the tooling, which never ships to Lambda" if module == "imgpipe"
                            else "neither the core, the standard library nor a runtime "
                                 "dependency of pyproject.toml")
                    problems.append(f"{where}:{line} imports {module}: {what}")
    return sorted(problems)


def test_the_core_imports_only_itself_the_stdlib_and_its_dependencies() -> None:
    assert violations() == []


def test_the_contract_catches_an_import_of_the_tooling(tmp_path: Path) -> None:
    """On a copy of the core, one import of `imgpipe` (even inside a function) and one of a
    dev-only library each give a sentence naming the file and line."""
    for top in CORE:
        shutil.copytree(ROOT / top, tmp_path / top,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert violations(tmp_path) == []
    settings = tmp_path / "pipeline" / "settings.py"
    lines = settings.read_text(encoding="utf-8").count("\n")
    with settings.open("a", encoding="utf-8") as f:
        f.write("\n\ndef _bad() -> None:\n    from imgpipe.local.stack import LocalStack\n")
    (tmp_path / "handlers" / "extra.py").write_text("import moto\n", encoding="utf-8")
    assert violations(tmp_path) == [
        "handlers/extra.py:1 imports moto: neither the core, the standard library nor a "
        "runtime dependency of pyproject.toml",
        f"pipeline/settings.py:{lines + 4} imports imgpipe: the tooling, which never ships "
        "to Lambda",
    ]


def test_the_tooling_is_not_in_the_core_folder() -> None:
    """What moved to imgpipe/ stays out of pipeline/ (`python -m imgpipe`, not `-m pipeline`)."""
    for name in ("cli.py", "__main__.py", "commands", "local", "bench", "cost", "report",
                 "redrive.py", "reconcile.py"):
        left = ROOT / "pipeline" / name  # a folder of stale byte code alone does not count
        assert not (left.is_file() or any(left.rglob("*.py"))), name
        assert (ROOT / "imgpipe" / name).exists(), name
