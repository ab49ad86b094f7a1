"""`pip install .` (not editable) ships every package of the code: pyproject.toml lists
them by name, so a new package folder that is not listed would be left out of the wheel and
fail only on an installed copy."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
                 ["tool"]["setuptools"]["packages"])
    folders = {init.parent.relative_to(ROOT).as_posix().replace("/", ".")
               for top in ("pipeline", "handlers") for init in (ROOT / top).rglob("__init__.py")}
    assert folders == listed, (f"add to [tool.setuptools] packages: {sorted(folders - listed)}; "
                               f"listed without a folder: {sorted(listed - folders)}")
