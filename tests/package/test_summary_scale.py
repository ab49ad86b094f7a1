"""The packaged summary function (`imgpipe local --package`, python3.12 as Lambda runs it)
sums a million objects' ResultWriter output within its 512 MB (see
tests/e2e/test_local_summary_scale.py, which runs the source tree)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.e2e.test_local_summary_scale import summarize_a_million

from .conftest import HOST_ARCH


def test_the_packaged_summary_function_sums_a_million_objects_in_512_mb(
        package: Callable[[str], Path], runtime_python: Path, tmp_path: Path) -> None:
    summarize_a_million(tmp_path, "--package", str(package(HOST_ARCH)), "--runtime-python",
                        str(runtime_python))
