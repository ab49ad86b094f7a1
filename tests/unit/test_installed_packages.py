"""`pip install .` (not editable) ships every package of the code: pyproject.toml lists
them by name, so a new package folder that is not listed would be left out of the wheel and
fail only on an installed copy. A folder of data inside a package (the report's static/)
is listed too: setuptools treats it as a namespace package and warns, on every install,
when the list leaves it out."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"]  # type: ignore[no-any-return]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(_config()["packages"])  # type: ignore[call-overload]
    folders = {init.parent.relative_to(ROOT).as_posix().replace("/", ".")
               for top in ("pipeline", "imgpipe", "handlers")
               for init in (ROOT / top).rglob("__init__.py")}
    data_folders = {d.relative_to(ROOT).as_posix().replace("/", ".")
                    for top in ("pipeline", "imgpipe", "handlers") for d in (ROOT / top).rglob("*")
                    if d.is_dir() and d.name != "__pycache__"
                    and any(f.is_file() for f in d.iterdir())}
    wanted = folders | data_folders
    assert wanted == listed, (f"add to [tool.setuptools] packages: {sorted(wanted - listed)}; "
                              f"listed without a folder: {sorted(listed - wanted)}")


def test_every_data_folder_ships_its_files() -> None:
    """A data-only package ships only what package-data names for it."""
    data = _config()["package-data"]
    static = ROOT / "imgpipe" / "report" / "static"
    patterns = data["imgpipe.report.static"]  # type: ignore[index]
    shipped = {f.name for p in patterns for f in static.glob(p)}
    assert shipped == {f.name for f in static.iterdir() if f.is_file()}
