"""The benchmark's packaged cold start runs the package as Lambda would (its timing is the
benchmark's business; here only that the measurement works and splits its phases)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imgpipe.bench import measure_cold_start, packaged_runtime

from .conftest import HOST_ARCH, ROOT


def test_packaged_cold_start_is_measured(package: Callable[[str], Path],
                                         runtime_python: Path) -> None:
    root = package(HOST_ARCH)
    assert packaged_runtime() == (runtime_python, root)
    cold = measure_cold_start(ROOT / "samples" / "coffee.jpg", 1, (runtime_python, root))
    assert len(cold.samples) == 1
    assert min(cold.import_s, cold.session_s, cold.first_prediction_s) > 0
    assert cold.import_s + cold.session_s + cold.first_prediction_s < cold.seconds
