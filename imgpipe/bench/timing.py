"""How a figure is timed on a machine that may be shared.

- `time_repeats`: warm-up, then images/s of each repeat (callers report the median);
  `time_once`: one call, as a step of a paired round;
- `cpu_snapshot` / `other_load_between`: how much of the CPUs other processes (or the
  hypervisor) took while something ran;
- `select_rounds`: the paired rounds a ratio is taken over: the quiet ones, when there are
  enough of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


def time_repeats(fn: Callable[[], int], repeats: int, warmup: int = 1) -> list[float]:
    """Run `fn` (returns how many images it handled) and give images/s per repeat."""
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return rates


def time_once(fn: Callable[[], int]) -> float:
    """Images/s of one call of `fn`, no warm-up: one step of a paired round."""
    (rate,) = time_repeats(fn, 1, warmup=0)
    return rate


# A round during which other processes used more than this share of the CPUs is "noisy";
# ratios are taken over quiet rounds when there are enough of them.
QUIET_OTHER_LOAD = 0.10
MIN_QUIET_ROUNDS = 3


def cpu_snapshot() -> tuple[float, float, float]:
    """(all CPU time, busy CPU time, this process's CPU time), in clock ticks."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return (0.0, 0.0, 0.0)
    total = float(sum(vals))
    t = os.times()
    return total, total - vals[3] - vals[4], (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def other_load_between(before: tuple[float, float, float],
                       after: tuple[float, float, float]) -> float:
    """Share of all CPU time used by other processes between two snapshots (0..1)."""
    total = after[0] - before[0]
    if total <= 0:
        return 0.0
    return max(0.0, min(1.0, ((after[1] - before[1]) - (after[2] - before[2])) / total))


class _HasLoad(Protocol):
    @property
    def other_load(self) -> float: ...


R = TypeVar("R", bound=_HasLoad)


def select_rounds(rounds: Sequence[R]) -> tuple[list[R], bool]:
    """The quiet rounds if there are enough of them, else all; and whether they were quiet."""
    quiet = [r for r in rounds if r.other_load <= QUIET_OTHER_LOAD]
    if len(quiet) >= min(MIN_QUIET_ROUNDS, len(rounds)):
        return quiet, True
    return list(rounds), False

