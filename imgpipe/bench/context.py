"""What every part of the benchmark shares: the machine, the image sets, the report's rows
and targets, and the `BenchContext` that sections read and add figures to.

A *section* is a callable taking the `BenchContext` and returning `Row`s. `ctx.values`
holds every figure measured so far under its row's stable key (`Row.key`), so a section
can compare its figure with one an earlier section measured in the same run.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The checkout (or the installed tree) this package runs from: samples/, bench/, build/.
SOURCE_ROOT = Path(__file__).resolve().parents[2]

# The core's batch size in every measurement of the core.
CORE_BATCH = 16

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Machine:
    """The machine and software the run measured, as the report's header gives them."""

    cpu_model: str
    cpus_available: int  # what the core uses (affinity + cgroup quota)
    cpus_online: int
    ram_gib: float
    python: str
    onnxruntime: str
    numpy: str
    pillow: str
    platform: str
    date: str
    load_before: tuple[float, float, float]


@dataclass(frozen=True)
class ImageSet:
    """Generated JPEGs of one size (`images.generate_images`)."""

    name: str  # "12mp" | "web"
    paths: tuple[Path, ...]
    width: int
    height: int
    mean_bytes: int

    @property
    def title(self) -> str:
        mp = self.width * self.height / 1e6
        return f"{self.width}x{self.height} ({mp:.1f} MP, ~{self.mean_bytes / 1e6:.2f} MB)"


@dataclass(frozen=True)
class Row:
    """One line of the report table. `key` is stable: other sections look figures up by it."""

    key: str
    label: str
    value: float
    unit: str
    reference: str = ""  # the figure it is compared with, from the same run
    ratio: str = ""
    section: str = ""


NOT_JUDGED = "not judged (quick)"


@dataclass(frozen=True)
class Target:
    """One of the issue's targets (`targets.targets_from`): a figure of the run and its goal."""

    name: str
    measured: float
    target: float
    unit: str
    higher_is_better: bool
    definition: str
    # False in a quick run: a few tiny batches say nothing about the goals
    judged: bool = True

    @property
    def passed(self) -> bool:
        if self.higher_is_better:
            return self.measured >= self.target
        return self.measured <= self.target

    @property
    def verdict(self) -> str:
        if not self.judged:
            return NOT_JUDGED
        return "PASS" if self.passed else "FAIL"


@dataclass
class BenchContext:
    """What sections share: the model, the image sets, knobs, and every figure so far."""

    manifest: Any
    sets: dict[str, ImageSet]
    machine: Machine
    quick: bool
    repeats: int
    progress: Progress
    values: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # raw dataclasses, for results.json


@dataclass(frozen=True)
class BenchResult:
    """What `run_benchmark` returns: the rows and targets, and where it wrote them."""

    machine: Machine
    rows: tuple[Row, ...]
    targets: tuple[Target, ...]
    report_path: Path
    results_path: Path
    elapsed_s: float
    load_after: tuple[float, float, float]


Section = Callable[[BenchContext], Sequence[Row]]


def describe_machine() -> Machine:
    """CPU, RAM, versions and load average now (Linux's /proc; placeholders elsewhere)."""
    import onnxruntime
    import PIL

    from pipeline.classifier import available_cpus

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    ram = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 1024 / 1024
                break
    except OSError:
        pass
    return Machine(
        cpu_model=cpu,
        cpus_available=available_cpus(),
        cpus_online=os.cpu_count() or 1,
        ram_gib=round(ram, 1),
        python=platform.python_version(),
        onnxruntime=onnxruntime.__version__,
        numpy=np.__version__,
        pillow=PIL.__version__,
        platform=platform.platform(),
        date=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load_before=loadavg(),
    )


def loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    try:
        a, b, c = os.getloadavg()
        return (round(a, 2), round(b, 2), round(c, 2))
    except OSError:  # pragma: no cover
        return (0.0, 0.0, 0.0)

