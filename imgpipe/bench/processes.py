"""Measurements in fresh processes: cold start (spawn to first prediction) and peak RSS.

Each child is a short script run with `python -c`; it prints one JSON line with its own
phases, which the parent reads. Three children:

- the core from the source tree (`measure_cold_start(image, n, model=...)`);
- the packaged ingest handler as Lambda starts it (`measure_cold_start(image, n,
  packaged_runtime())`): the runtime's python3.12 in `.venv-runtime`, the package built by
  `make package` first on sys.path as /var/task is;
- the core over a whole image set at a batch size, reporting its peak RSS
  (`measure_peak_rss`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgpipe.bench.context import SOURCE_ROOT, ImageSet


@dataclass(frozen=True)
class ColdStart:
    """Spawn to first prediction in fresh processes: the wall time and the child's phases."""

    seconds: float  # median wall time, spawn -> first prediction printed
    samples: tuple[float, ...]
    import_s: float  # medians of the child's own phases (from its first line of code)
    session_s: float
    first_prediction_s: float


@dataclass(frozen=True)
class PeakRss:
    """Peak resident memory of a fresh process running the core over an image set."""

    batch: int
    images: int
    peak_mib: float  # VmHWM of the child after the run
    after_load_mib: float  # VmHWM after imports + session, before any image


_COLD_CHILD = """
import time
t0 = time.perf_counter()
import json, sys
from pipeline.classifier import Classifier
from pipeline.modelstore import resolve_model
t1 = time.perf_counter()
clf = Classifier(resolve_model(sys.argv[2]), batch_size=16)
t2 = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    pred = clf.classify_bytes(f.read())
t3 = time.perf_counter()
print(json.dumps({"label": pred.label, "import_s": t1 - t0, "session_s": t2 - t1,
                  "first_prediction_s": t3 - t2}), flush=True)
"""

# The packaged handler as Lambda starts it: the runtime's python3.12 with only what the
# runtime gives (.venv-runtime), the package first on sys.path as /var/task is; importing
# the handler module, building its service (model check, session, AWS clients) and the
# first prediction. `-I`: nothing from the environment or the working directory.
_PACKAGED_COLD_CHILD = """
import time
t0 = time.perf_counter()
import json, sys
sys.path.insert(0, sys.argv[2])
import handlers.ingest
t1 = time.perf_counter()
service = handlers.ingest.get_service()
t2 = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    pred = service.classifier.classify_bytes(f.read())
t3 = time.perf_counter()
print(json.dumps({"label": pred.label, "import_s": t1 - t0, "session_s": t2 - t1,
                  "first_prediction_s": t3 - t2}), flush=True)
"""

# VmHWM, not ru_maxrss: ru_maxrss survives execve, so a child spawned (vfork) from a big
# parent would report the parent's RSS.
_RSS_CHILD = """
import json, sys
from pipeline.classifier import Classifier
from pipeline.modelstore import resolve_model

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0

def loader(p):
    def load():
        with open(p, "rb") as f:
            return f.read()
    return load

batch = int(sys.argv[1])
paths = json.load(open(sys.argv[2]))
clf = Classifier(resolve_model(sys.argv[3]), batch_size=batch)
after_load = hwm()
n = 0
for r in clf.classify_many((p, loader(p)) for p in paths):
    assert r.prediction is not None, r.error
    n += 1
clf.close()
print(json.dumps({"images": n, "peak": hwm(), "after_load": after_load}), flush=True)
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(SOURCE_ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def packaged_runtime() -> tuple[Path, Path] | None:
    """(runtime python, package root) for this machine's architecture, when `make package`
    and `make runtime-venv` have made them in the repository this module runs from."""
    root = SOURCE_ROOT
    arch = "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"
    python, package = root / ".venv-runtime" / "bin" / "python", root / "build" / "package" / arch
    if python.exists() and (package / "handlers" / "ingest.py").is_file():
        return python, package
    return None


def measure_cold_start(image: Path, repeats: int,
                       packaged: tuple[Path, Path] | None = None, model: str = "") -> ColdStart:
    """Fresh `python` process -> first prediction printed, wall clock seen by the parent:
    the source tree's core with `model` (a model source as `--model` takes it; default: the
    packaged default), or with `packaged` (python, code root) the ingest handler loaded from
    that root (a built package, or the source tree itself)."""
    if packaged:
        python, package = packaged
        command = [str(python), "-I", "-c", _PACKAGED_COLD_CHILD, str(image), str(package)]
        env = {**os.environ, "POWERTOOLS_TRACE_DISABLED": "true",
               "POWERTOOLS_METRICS_DISABLED": "true"}
    else:
        command, env = [sys.executable, "-c", _COLD_CHILD, str(image), model], _child_env()
    walls: list[float] = []
    phases: list[dict[str, Any]] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        wall = time.perf_counter() - t0
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0 or not line:
            raise RuntimeError(f"cold-start child failed ({proc.returncode}): {err.strip()}")
        walls.append(wall)
        phases.append(json.loads(line))
    return ColdStart(
        seconds=statistics.median(walls),
        samples=tuple(walls),
        import_s=statistics.median(p["import_s"] for p in phases),
        session_s=statistics.median(p["session_s"] for p in phases),
        first_prediction_s=statistics.median(p["first_prediction_s"] for p in phases),
    )


def measure_peak_rss(image_set: ImageSet, batch: int, work_dir: Path,
                     model: str = "") -> PeakRss:
    """Peak RSS of a fresh process running the core over the whole set at `batch`."""
    work_dir.mkdir(parents=True, exist_ok=True)
    listing = work_dir / f"rss-paths-{image_set.name}.json"
    listing.write_text(json.dumps([str(p) for p in image_set.paths]))
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(batch), str(listing), model],
        capture_output=True, text=True, env=_child_env(), timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"peak-RSS child failed ({proc.returncode}): {proc.stderr.strip()}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = 1024.0 * 1024.0
    return PeakRss(batch, int(doc["images"]), doc["peak"] / mib, doc["after_load"] / mib)

