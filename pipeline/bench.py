"""`imgpipe bench`: what the pipeline does on this machine, measured side by side in one run.

Everything the issue asks for comes from ONE run on the same (possibly shared, possibly
noisy) machine, and the target ratios pair figures taken seconds apart (`measure_rounds`):

- the *model limit*: raw ONNX Runtime throughput on pre-made tensors, batch 1/8/16/32;
- decode ms/image, single thread, with DCT scaling (`Image.draft`, the core's path) and
  with a full decode of the same file and the same crop/resize recipe;
- the *CPU bound*: n_cpus / (draft decode ms + 1-thread batch-16 inference ms per image),
  i.e. the throughput if every CPU did nothing but decode-then-infer without overhead;
- the core end-to-end (`Classifier.classify_many`, loaders reading file bytes as the Lambda
  reads S3 bytes) and a naive per-image handler written as tutorials write it;
- cold start (fresh process to first prediction) and peak RSS, each in fresh subprocesses.

Measurements are functions returning small frozen dataclasses; a run is a list of
*sections* (callables taking the `BenchContext`, returning `Row`s), so later work can add
rows (the local stack end to end, backfill throughput) next to the core's figure by passing
`extra_sections=[...]` to `run_benchmark` or appending to `SECTIONS`. `ctx.values` holds
every figure measured so far under a stable key (see `Row.key`).

Timings: warm-up first, then several repeats; the median is reported. The machine may be
shared, so the report records the load average before and after the run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

__all__ = [
    "BenchContext",
    "BenchResult",
    "DecodeTiming",
    "ImageSet",
    "Machine",
    "ModelThroughput",
    "Row",
    "SECTIONS",
    "Section",
    "Target",
    "Throughput",
    "default_bench_dir",
    "describe_machine",
    "generate_images",
    "measure_cold_start",
    "measure_core",
    "measure_decode",
    "measure_model",
    "measure_naive",
    "measure_peak_rss",
    "run_benchmark",
]

Progress = Callable[[str], None]

# 12 MP: 4000x3000 like a phone camera; noise so it compresses like a real photo (~3 MB).
BIG_SIZE = (4000, 3000)
BIG_NOISE_SIGMA = 7.0
BIG_QUALITY = 90
WEB_SIZE = (800, 600)
WEB_NOISE_SIGMA = 2.0
WEB_QUALITY = 85

# The targets.
TARGET_CORE_VS_BOUND = 0.90
TARGET_CORE_VS_NAIVE = 4.5
TARGET_COLD_START_S = 0.5
TARGET_PEAK_RSS_MIB = 350.0
TARGET_BACKFILL_VS_CORE = 0.70
TARGET_INGEST_VS_CORE = 0.60
TARGET_INT8_VS_FP32_WEB = 1.6
CORE_BATCH = 16
MODEL_BATCHES = (1, 8, 16, 32)


# ---- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
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
class ModelThroughput:
    batch: int
    threads: int
    images_per_s: float  # median over repeats
    ms_per_image: float
    samples: tuple[float, ...]  # img/s of each repeat


@dataclass(frozen=True)
class DecodeTiming:
    image_set: str
    path: str  # "draft" | "full"
    ms_per_image: float  # median over repeats of (time for the set / images)
    samples: tuple[float, ...]


@dataclass(frozen=True)
class Throughput:
    what: str
    image_set: str
    images_per_s: float  # median over repeats
    images: int  # per repeat
    samples: tuple[float, ...]


@dataclass(frozen=True)
class Round:
    """One round of the paired measurement: the bound's parts, the core and the naive
    handler, back to back, plus how busy the rest of the machine was meanwhile."""

    draft_ms: float
    infer_ms: float
    bound_ips: float
    core_ips: float
    naive_ips: float
    other_load: float  # share of all CPU time other processes (or the hypervisor) took
    bound_left_ips: float  # the bound on the CPU share other processes left us


@dataclass(frozen=True)
class ColdStart:
    seconds: float  # median wall time, spawn -> first prediction printed
    samples: tuple[float, ...]
    import_s: float  # medians of the child's own phases (from its first line of code)
    session_s: float
    first_prediction_s: float


@dataclass(frozen=True)
class PeakRss:
    batch: int
    images: int
    peak_mib: float  # VmHWM of the child after the run
    after_load_mib: float  # VmHWM after imports + session, before any image


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


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    target: float
    unit: str
    higher_is_better: bool
    definition: str

    @property
    def passed(self) -> bool:
        if self.higher_is_better:
            return self.measured >= self.target
        return self.measured <= self.target

    @property
    def verdict(self) -> str:
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
    machine: Machine
    rows: tuple[Row, ...]
    targets: tuple[Target, ...]
    report_path: Path
    results_path: Path
    elapsed_s: float
    load_after: tuple[float, float, float]


Section = Callable[[BenchContext], Sequence[Row]]


# ---- machine -------------------------------------------------------------------------


def describe_machine() -> Machine:
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
        load_before=_loadavg(),
    )


def _loadavg() -> tuple[float, float, float]:
    try:
        a, b, c = os.getloadavg()
        return (round(a, 2), round(b, 2), round(c, 2))
    except OSError:  # pragma: no cover
        return (0.0, 0.0, 0.0)


# ---- image sets ----------------------------------------------------------------------


def _sample_paths() -> list[Path]:
    root = Path(__file__).resolve().parent.parent / "samples"
    paths = sorted(root.glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no sample photos in {root}")
    return paths


def generate_images(
    cache_dir: Path,
    name: str,
    count: int,
    size: tuple[int, int],
    sigma: float,
    quality: int,
    progress: Progress | None = None,
) -> ImageSet:
    """`count` JPEGs of `size`: sample photos cropped to the aspect, upscaled, plus noise.

    Files are cached by name/size/noise/quality, so only the first run pays for them.
    """
    from PIL import Image

    w, h = size
    folder = cache_dir / f"{name}-{w}x{h}-n{sigma:g}-q{quality}"
    folder.mkdir(parents=True, exist_ok=True)
    samples = _sample_paths()
    paths: list[Path] = []
    made = 0
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        paths.append(path)
        if path.is_file() and path.stat().st_size > 0:
            continue
        rng = np.random.default_rng(1000 + i)
        with Image.open(samples[i % len(samples)]) as src:
            im = src.convert("RGB")
        sw, sh = im.size
        # A different crop (and mirror) of the sample per image, at the target aspect.
        frac = 0.8 + 0.2 * rng.random()
        cw = min(sw, round(sh * w / h)) * frac
        ch = cw * h / w
        left = rng.random() * (sw - cw)
        top = rng.random() * (sh - ch)
        im = im.resize((w, h), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
        if i // len(samples) % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(im, dtype=np.float32)
        arr = arr + rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(sigma)
        np.clip(arr, 0, 255, out=arr)
        out = Image.fromarray(arr.astype(np.uint8))
        tmp = path.with_suffix(".part")
        out.save(tmp, "JPEG", quality=quality)
        os.replace(tmp, path)
        made += 1
        if progress and made % 8 == 0:
            progress(f"  generated {made} {name} images")
    mean = int(statistics.fmean(p.stat().st_size for p in paths)) if paths else 0
    return ImageSet(name=name, paths=tuple(paths), width=w, height=h, mean_bytes=mean)


def _read_all(paths: Sequence[Path]) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def _file_loader(path: Path) -> Callable[[], bytes]:
    def load() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return load


# ---- noise ---------------------------------------------------------------------------

# A round during which other processes used more than this share of the CPUs is "noisy";
# ratios are taken over quiet rounds when there are enough of them.
QUIET_OTHER_LOAD = 0.10
MIN_QUIET_ROUNDS = 3


def _cpu_snapshot() -> tuple[float, float, float]:
    """(all CPU time, busy CPU time, this process's CPU time), in clock ticks."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return (0.0, 0.0, 0.0)
    total = float(sum(vals))
    t = os.times()
    return total, total - vals[3] - vals[4], (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def _other_load(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Share of all CPU time used by other processes between two snapshots (0..1)."""
    total = after[0] - before[0]
    if total <= 0:
        return 0.0
    return max(0.0, min(1.0, ((after[1] - before[1]) - (after[2] - before[2])) / total))


# ---- measurements --------------------------------------------------------------------


def _time_repeats(fn: Callable[[], int], repeats: int, warmup: int = 1) -> list[float]:
    """Run `fn` (returns how many images it handled) and give images/s per repeat."""
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return rates


def measure_model(
    manifest: Any, batch: int, threads: int | None, repeats: int, min_images: int = 64
) -> ModelThroughput:
    """Raw session throughput on pre-made tensors (no decode), in the core's session setup."""
    from pipeline.classifier import available_cpus, create_session

    n_threads = threads or available_cpus()
    session = create_session(manifest, n_threads)
    h, w = manifest.input_size
    shape = (batch, 3, h, w) if manifest.layout == "NCHW" else (batch, h, w, 3)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    feed = {manifest.input_name: x}
    calls = max(1, -(-min_images // batch))

    def run() -> int:
        for _ in range(calls):
            session.run([manifest.output_name], feed)
        return calls * batch

    rates = _time_repeats(run, repeats, warmup=1)
    ips = statistics.median(rates)
    return ModelThroughput(batch, n_threads, ips, 1000.0 / ips, tuple(rates))


def _decode_full(data: bytes, manifest: Any) -> np.ndarray:
    """The core's recipe (crop + bicubic + normalise) without DCT scaling: a full decode."""
    from PIL import Image

    from pipeline.decode import _resize, normalize_pixels

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        rgb = im.convert("RGB")
    return normalize_pixels(np.asarray(_resize(rgb, manifest), dtype=np.uint8), manifest)


def measure_decode(
    manifest: Any, image_set: ImageSet, path: str, repeats: int, limit: int | None = None
) -> DecodeTiming:
    """Single-thread ms/image: bytes in memory -> model tensor. `path` is draft or full."""
    from pipeline.decode import decode_image

    blobs = _read_all(image_set.paths[:limit] if limit else image_set.paths)

    def run() -> int:
        for data in blobs:
            if path == "draft":
                decode_image(data, manifest)
            else:
                _decode_full(data, manifest)
        return len(blobs)

    rates = _time_repeats(run, repeats, warmup=0 if path == "full" else 1)
    ms = [1000.0 / r for r in rates]
    return DecodeTiming(image_set.name, path, statistics.median(ms), tuple(ms))


def _core_runner(manifest: Any, paths: Sequence[Path], batch_size: int) -> tuple[
    Callable[[], int], Callable[[], None]
]:
    from pipeline.classifier import Classifier

    clf = Classifier(manifest, batch_size=batch_size)

    def run() -> int:
        n = 0
        for result in clf.classify_many((p, _file_loader(p)) for p in paths):
            if result.prediction is None:
                raise RuntimeError(f"core failed on {result.key}: {result.error}")
            n += 1
        return n

    return run, clf.close


def measure_core(
    manifest: Any, image_set: ImageSet, repeats: int, batch_size: int = CORE_BATCH
) -> Throughput:
    """`Classifier.classify_many` over the set, loaders reading the files (like S3 bytes)."""
    run, close = _core_runner(manifest, image_set.paths, batch_size)
    try:
        rates = _time_repeats(run, repeats, warmup=1)
    finally:
        close()
    return Throughput("core", image_set.name, statistics.median(rates), len(image_set.paths),
                      tuple(rates))


def _naive_runner(manifest: Any, paths: Sequence[Path]) -> Callable[[], int]:
    """A per-image handler as tutorials write it: default session (no thread settings),
    full decode, NEAREST resize, batch 1, one image after the other."""
    import onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(str(manifest.onnx_path), providers=["CPUExecutionProvider"])
    h, w = manifest.input_size

    def handler(data: bytes) -> int:
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((w, h), Image.Resampling.NEAREST)
        x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
        x = x.transpose(2, 0, 1)[np.newaxis]
        logits = session.run(None, {manifest.input_name: x})[0]
        return int(np.argmax(logits))

    def run() -> int:
        for p in paths:
            with open(p, "rb") as f:
                handler(f.read())
        return len(paths)

    return run


def measure_naive(
    manifest: Any, image_set: ImageSet, repeats: int, limit: int | None = None
) -> Throughput:
    """The naive handler's images/s over (the first `limit` files of) the set."""
    paths = image_set.paths[:limit] if limit else image_set.paths
    rates = _time_repeats(_naive_runner(manifest, paths), repeats, warmup=1)
    return Throughput("naive", image_set.name, statistics.median(rates), len(paths), tuple(rates))


def measure_rounds(
    manifest: Any,
    image_set: ImageSet,
    rounds: int,
    cpus: int,
    *,
    draft_limit: int | None = None,
    naive_limit: int | None = None,
    batch_size: int = CORE_BATCH,
) -> list[Round]:
    """The ratios the targets are about, measured in back-to-back rounds.

    Each round times the CPU bound's two parts (draft decode on one thread, batch-16
    inference on a 1-thread session), the core over the whole set and the naive handler,
    and records how much CPU other processes took meanwhile. On a shared machine a burst
    of outside load then hits one round's numbers together instead of skewing one side of
    a ratio.
    """
    from pipeline.classifier import create_session
    from pipeline.decode import decode_image

    blobs = _read_all(image_set.paths[:draft_limit] if draft_limit else image_set.paths)
    one_thread = create_session(manifest, 1)
    h, w = manifest.input_size
    shape = ((batch_size, 3, h, w) if manifest.layout == "NCHW" else (batch_size, h, w, 3))
    feed = {manifest.input_name: np.random.default_rng(0).standard_normal(
        shape, dtype=np.float32)}
    infer_calls = 2

    def draft() -> int:
        for data in blobs:
            decode_image(data, manifest)
        return len(blobs)

    def infer() -> int:
        for _ in range(infer_calls):
            one_thread.run([manifest.output_name], feed)
        return infer_calls * batch_size

    core, close = _core_runner(manifest, image_set.paths, batch_size)
    naive = _naive_runner(manifest, image_set.paths[:naive_limit] if naive_limit
                          else image_set.paths)
    out = []
    try:
        for fn in (draft, infer, core, naive):  # warm-up
            fn()
        for _ in range(rounds):
            before = _cpu_snapshot()
            (draft_ips,) = _time_repeats(draft, 1, warmup=0)
            (infer_ips,) = _time_repeats(infer, 1, warmup=0)
            (core_ips,) = _time_repeats(core, 1, warmup=0)
            (naive_ips,) = _time_repeats(naive, 1, warmup=0)
            other = _other_load(before, _cpu_snapshot())
            d_ms, i_ms = 1000.0 / draft_ips, 1000.0 / infer_ips
            bound = cpus * 1000.0 / (d_ms + i_ms)
            out.append(Round(d_ms, i_ms, bound, core_ips, naive_ips, other,
                             bound * (1.0 - other)))
    finally:
        close()
    return out


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
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def packaged_runtime() -> tuple[Path, Path] | None:
    """(runtime python, package root) for this machine's architecture, when `make package`
    and `make runtime-venv` have made them in the repository this module runs from."""
    root = Path(__file__).resolve().parent.parent
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


# ---- sections ------------------------------------------------------------------------


def _fmt(value: float, unit: str) -> str:
    if unit in ("img/s", "MiB"):
        return f"{value:.1f} {unit}"
    if unit == "ms/img":
        return f"{value:.1f} ms/img"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:g} {unit}"


def section_model(ctx: BenchContext) -> list[Row]:
    rows = []
    cpus = ctx.machine.cpus_available
    for b in MODEL_BATCHES:
        ctx.progress(f"model limit: batch {b} on {cpus} thread(s)")
        m = measure_model(ctx.manifest, b, cpus, ctx.repeats, min_images=32 if ctx.quick else 96)
        ctx.details[f"model.b{b}"] = m
        rows.append(Row(f"model.b{b}.ips", f"model limit, pre-made tensors, batch {b}, "
                        f"{cpus} intra-op thread(s)", m.images_per_s, "img/s",
                        section="model"))
    ctx.progress("inference: batch 16 on 1 intra-op thread")
    one = measure_model(ctx.manifest, CORE_BATCH, 1, ctx.repeats,
                        min_images=32 if ctx.quick else 64)
    ctx.details["model.1t"] = one
    rows.append(Row("infer.1t.ms", "inference, batch 16 on 1 intra-op thread, per image",
                    one.ms_per_image, "ms/img", section="model"))
    return rows


def section_decode(ctx: BenchContext) -> list[Row]:
    rows = []
    full_limit = 4 if ctx.quick else 8
    for name, s in ctx.sets.items():
        for path in ("draft", "full"):
            ctx.progress(f"decode {name}: {path}, 1 thread")
            d = measure_decode(ctx.manifest, s, path, ctx.repeats,
                               limit=full_limit if path == "full" else None)
            ctx.details[f"decode.{name}.{path}"] = d
            ref = ratio = ""
            if path == "full":
                draft = ctx.values[f"decode.{name}.draft.ms"]
                ref = f"draft {draft:.1f} ms/img"
                ratio = f"draft is {d.ms_per_image / draft:.1f}x faster"
            label = ("decode, draft (DCT scaling, core path), 1 thread" if path == "draft"
                     else "decode, full (same crop + bicubic), 1 thread")
            rows.append(Row(f"decode.{name}.{path}.ms", f"{label}, {s.name}",
                            d.ms_per_image, "ms/img", ref, ratio, section=name))
            ctx.values[f"decode.{name}.{path}.ms"] = d.ms_per_image
    return rows


def section_throughput(ctx: BenchContext) -> list[Row]:
    rows = []
    cpus = ctx.machine.cpus_available
    for name, s in ctx.sets.items():
        big = name == "12mp"
        n_rounds = 2 if ctx.quick else 7
        ctx.progress(f"{name}: {n_rounds} rounds of [draft decode, 1-thread inference, core "
                     f"(classify_many, batch {CORE_BATCH}), naive handler]")
        rounds = measure_rounds(
            ctx.manifest, s, n_rounds, cpus,
            draft_limit=16 if big else None,
            naive_limit=(2 if ctx.quick else 8) if big else (4 if ctx.quick else 16),
        )
        ctx.details[f"rounds.{name}"] = rounds
        used, quiet = select_rounds(rounds)
        which = (f"{len(used)} of {len(rounds)} rounds with other load <= "
                 f"{100 * QUIET_OTHER_LOAD:.0f} %" if quiet else
                 f"all {len(rounds)} rounds (too few quiet ones: results are noisy)")
        ctx.details[f"rounds.{name}.used"] = which
        med = statistics.median
        d_ms, i_ms = med(r.draft_ms for r in used), med(r.infer_ms for r in used)
        bound = med(r.bound_ips for r in used)
        core = med(r.core_ips for r in used)
        naive = med(r.naive_ips for r in used)
        vs_bound = med(r.core_ips / r.bound_ips for r in used)
        vs_naive = med(r.core_ips / r.naive_ips for r in used)
        vs_left = med(r.core_ips / r.bound_left_ips for r in used)
        ctx.values.update({
            f"bound.{name}.ips": bound, f"core.{name}.ips": core, f"naive.{name}.ips": naive,
            f"core_vs_bound.{name}": vs_bound, f"core_vs_naive.{name}": vs_naive,
            f"quiet.{name}": 1.0 if quiet else 0.0,
        })
        ctx.details[f"rounds.{name}.noisy"] = not quiet
        rows += [
            Row(f"bound.{name}.ips", f"CPU bound, {name}: {cpus} CPU(s) x 1000 / (draft decode "
                "+ 1-thread inference ms/img)", bound, "img/s",
                f"{d_ms:.1f} + {i_ms:.1f} ms/img in the same rounds", section=name),
            Row(f"core.{name}.ips", f"core end to end (classify_many, batch {CORE_BATCH}), "
                f"{name}", core, "img/s", f"CPU bound {bound:.1f} img/s; {which}",
                f"{100 * vs_bound:.0f} % of bound ({100 * vs_left:.0f} % of the bound on the "
                "CPU other processes left)", section=name),
            Row(f"naive.{name}.ips", f"naive per-image handler, {name}", naive, "img/s",
                f"core {core:.1f} img/s", f"core is {vs_naive:.1f}x faster", section=name),
        ]
    return rows


def section_process(ctx: BenchContext) -> list[Row]:
    big = ctx.sets["12mp"]
    repeats = 2 if ctx.quick else 5
    ctx.progress(f"cold start: {repeats} fresh processes, one 12 MP photo each")
    cold = measure_cold_start(big.paths[0], repeats)
    ctx.details["cold_start"] = cold
    ctx.values["cold_start.s"] = cold.seconds
    rows = [Row("cold_start.s", "cold start: process spawn -> first prediction (12 MP photo)",
                cold.seconds, "s",
                f"import {cold.import_s:.3f} + session {cold.session_s:.3f} + first "
                f"prediction {cold.first_prediction_s:.3f} s", section="process")]
    packaged = packaged_runtime()
    if packaged is None:
        ctx.progress("packaged cold start skipped: run `make package runtime-venv` first")
    else:
        ctx.progress(f"cold start of the ingest handler: {repeats} fresh processes each, "
                     "packaged (python3.12) and from the source tree")
        pcold = measure_cold_start(big.paths[0], repeats, packaged)
        # The same child on the source tree: what the package itself adds or saves.
        tree = Path(__file__).resolve().parent.parent
        hcold = measure_cold_start(big.paths[0], repeats, (Path(sys.executable), tree))
        ctx.details["cold_start.packaged"] = pcold
        ctx.details["cold_start.handler_tree"] = hcold
        ctx.values["cold_start.packaged.s"] = pcold.seconds
        rows.append(Row(
            "cold_start.packaged.s", "cold start, packaged ingest handler (python3.12, "
            "runtime-only venv): spawn -> first prediction", pcold.seconds, "s",
            f"same handler from the source tree {hcold.seconds:.3f} s (core alone "
            f"{cold.seconds:.3f} s)",
            f"import {pcold.import_s:.3f} + service {pcold.session_s:.3f} + first "
            f"prediction {pcold.first_prediction_s:.3f} s", section="process"))
    work = Path(ctx.details["out_dir"])
    for batch in (CORE_BATCH, 32):
        ctx.progress(f"peak RSS: fresh process, core over the 12 MP set at batch {batch}")
        rss = measure_peak_rss(big, batch, work)
        ctx.details[f"rss.b{batch}"] = rss
        ctx.values[f"rss.b{batch}.mib"] = rss.peak_mib
        rows.append(Row(f"rss.b{batch}.mib", f"peak RSS, core over {rss.images} x 12 MP, "
                        f"batch {batch}", rss.peak_mib, "MiB",
                        f"after imports + session {rss.after_load_mib:.0f} MiB",
                        section="process"))
    return rows


SECTIONS: list[Section] = [section_model, section_decode, section_throughput, section_process]


def targets_from(values: dict[str, float], cpus: int) -> list[Target]:
    out = []
    if "core_vs_bound.12mp" in values:
        out.append(Target(
            "core >= 90 % of the CPU bound (12 MP)",
            values["core_vs_bound.12mp"], TARGET_CORE_VS_BOUND, "x",
            True,
            f"median over paired rounds of core img/s / CPU bound, where CPU bound = {cpus} "
            "CPUs x 1000 / (draft decode ms/img: `decode_image` from bytes in memory to the "
            "normalised tensor, one thread, + inference ms/img: batch 16 on a session with 1 "
            "intra-op thread, pre-made tensor), both timed in the same round as the core",
        ))
    if "core_vs_naive.12mp" in values:
        out.append(Target(
            "core >= 4.5x the naive handler (12 MP)",
            values["core_vs_naive.12mp"], TARGET_CORE_VS_NAIVE, "x",
            True, "median over paired rounds of core img/s / naive handler img/s (first 8 "
            "files of the same set)",
        ))
    stack_targets = (
        ("stack_ingest.12mp.vs_core", "ingest", TARGET_INGEST_VS_CORE,
         "photos / seconds from the end of the upload to the last DynamoDB item on the local "
         "stack (S3 notification, SQS, the poller, the ingest function's Runtime API "
         "workers), template defaults / the core's images/s on the same photos, measured "
         "right before and after and averaged"),
        ("stack_backfill.12mp.vs_core", "backfill", TARGET_BACKFILL_VS_CORE,
         "median over paired rounds of backfill images/s on the local stack "
         "(StartExecution to SUCCEEDED, the emulator sharing the CPUs) / the core's "
         "images/s (classify_many from memory) on the same photos, measured right before "
         "and right after each backfill and averaged"),
    )
    for key, what, target, how in stack_targets:
        if key in values:
            out.append(Target(f"{what} >= {100 * target:.0f} % of the core (12 MP, local "
                              f"stack)", values[key], target, "x", True, how))
    if "int8_vs_fp32.core.web" in values:
        out.append(Target(
            "core with int8 >= 1.6x the core with fp32 (web-size)",
            values["int8_vs_fp32.core.web"], TARGET_INT8_VS_FP32_WEB, "x", True,
            "median over paired rounds of the core's images/s with efficientnet-lite0-int8 / "
            "with efficientnet-lite0 (fp32), both over the same web-size photos, back to back "
            "in alternating order",
        ))
    if "cold_start.s" in values:
        out.append(Target(
            "cold start <= 0.5 s", values["cold_start.s"], TARGET_COLD_START_S, "s", False,
            "median wall time from spawning `python` to the first prediction returned",
        ))
    if "rss.b16.mib" in values:
        out.append(Target(
            "peak RSS <= 350 MB at batch 16", values["rss.b16.mib"], TARGET_PEAK_RSS_MIB, "MiB",
            False, "peak resident set (VmHWM) of a fresh process that loads the model and runs "
            "the core over the 12 MP set at batch 16 (MiB, stricter than MB)",
        ))
    return out


# ---- the run -------------------------------------------------------------------------


def default_bench_dir() -> Path:
    """`bench/` of the checkout when running from one, else `./bench`."""
    beside = Path(__file__).resolve().parent.parent / "bench"
    return beside if beside.is_dir() else Path.cwd() / "bench"


def run_benchmark(
    out_dir: str | Path | None = None,
    quick: bool = False,
    images: int | None = None,
    *,
    report_path: str | Path | None = None,
    extra_sections: Sequence[Section] = (),
    sections: Sequence[Section] | None = None,
    big_size: tuple[int, int] = BIG_SIZE,
    web_size: tuple[int, int] = WEB_SIZE,
    repeats: int | None = None,
    manifest: Any = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Generate the image sets (cached), run every section, write REPORT.md and results.json.

    `out_dir` (default `bench/out/`) holds the generated images and `results.json`;
    the report goes to `report_path` (default `bench/REPORT.md`).
    """
    from pipeline.modelstore import resolve_model

    started = time.perf_counter()
    say: Progress = progress or (lambda _msg: None)
    bench_dir = default_bench_dir()
    out = Path(out_dir) if out_dir is not None else bench_dir / "out"
    report = Path(report_path) if report_path is not None else bench_dir / "REPORT.md"
    out.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    n_big = images or (4 if quick else 32)
    n_web = images or (4 if quick else 64)
    reps = repeats or (1 if quick else 5)

    machine = describe_machine()
    say(f"machine: {machine.cpu_model}, {machine.cpus_available} CPU(s), "
        f"load {machine.load_before[0]}")
    say(f"images: {n_big} x {big_size[0]}x{big_size[1]} and {n_web} x "
        f"{web_size[0]}x{web_size[1]} in {out / 'images'} (cached)")
    sets = {
        "12mp": generate_images(out / "images", "12mp", n_big, big_size, BIG_NOISE_SIGMA,
                                BIG_QUALITY, say),
        "web": generate_images(out / "images", "web", n_web, web_size, WEB_NOISE_SIGMA,
                               WEB_QUALITY, say),
    }
    ctx = BenchContext(
        manifest=manifest or resolve_model(), sets=sets, machine=machine, quick=quick,
        repeats=reps, progress=say,
    )
    ctx.details["out_dir"] = str(out)
    rows: list[Row] = []
    for section in [*(sections if sections is not None else SECTIONS), *extra_sections]:
        for row in section(ctx):
            ctx.values.setdefault(row.key, row.value)
            rows.append(row)
    targets = targets_from(ctx.values, machine.cpus_available)
    elapsed = time.perf_counter() - started
    result = BenchResult(machine, tuple(rows), tuple(targets), report, out / "results.json",
                         elapsed, _loadavg())
    report.write_text(render_report(result, sets, ctx), encoding="utf-8")
    result.results_path.write_text(json.dumps(_results_doc(result, sets, ctx), indent=2,
                                              default=str) + "\n", encoding="utf-8")
    _write_cost_inputs(ctx, sets, bench_dir / "cost-inputs.json" if not quick
                       else out / "cost-inputs.json")
    return result


def _write_cost_inputs(ctx: BenchContext, sets: dict[str, ImageSet], path: Path) -> None:
    """`imgpipe cost`'s figures (pipeline/cost/inputs.py): a full run replaces the
    committed bench/cost-inputs.json, a quick one writes beside results.json."""
    from pipeline.cost import cost_inputs_doc

    doc = cost_inputs_doc(ctx.values, ctx.machine.cpus_available, sets,
                          ctx.manifest.model_id, ctx.machine.cpu_model,
                          time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


# ---- report --------------------------------------------------------------------------


def render_table(rows: Sequence[Row]) -> str:
    lines = ["| measurement | value | reference (same run) | ratio |",
             "|---|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.label} | {_fmt(r.value, r.unit)} | {r.reference} | {r.ratio} |")
    return "\n".join(lines)


def render_targets(targets: Sequence[Target]) -> str:
    lines = ["| target | measured | target | result |", "|---|---:|---:|---|"]
    for t in targets:
        op = ">=" if t.higher_is_better else "<="
        meas = f"{t.measured:.2f}" if t.unit == "x" else _fmt(t.measured, t.unit)
        goal = f"{op} {t.target:g}" + ("x" if t.unit == "x" else f" {t.unit}")
        if t.unit == "x" and t.target < 1:
            meas = f"{100 * t.measured:.0f} %"
            goal = f"{op} {100 * t.target:.0f} %"
        lines.append(f"| {t.name} | {meas} | {goal} | **{t.verdict}** |")
    return "\n".join(lines)


def render_report(result: BenchResult, sets: dict[str, ImageSet], ctx: BenchContext) -> str:
    m = result.machine
    set_lines = "\n".join(f"- `{s.name}`: {len(s.paths)} JPEGs, {s.title}" for s in sets.values())
    target_defs = "\n".join(f"- **{t.name}**: {t.definition}." for t in result.targets)
    mode = "quick (smoke test; numbers are not meaningful)" if ctx.quick else "full"
    noise = " ".join(
        f"{name}: {ctx.details[f'rounds.{name}.used']}; other load per round "
        f"{[round(100 * r.other_load) for r in ctx.details[f'rounds.{name}']]} %."
        for name in sets if f"rounds.{name}.used" in ctx.details
    )
    return f"""# imgpipe benchmark report

Written by `imgpipe bench` ({mode} run, {result.elapsed_s:.0f} s). Every number below comes
from this one run on this machine; the target ratios pair figures measured seconds apart.
How to read it: `bench/README.md`.

## Machine

| | |
|---|---|
| CPU | {m.cpu_model} |
| CPUs used (affinity/cgroup) / online | {m.cpus_available} / {m.cpus_online} |
| RAM | {m.ram_gib} GiB |
| Python / onnxruntime / numpy / Pillow | {m.python} / {m.onnxruntime} / {m.numpy} / {m.pillow} |
| OS | {m.platform} |
| date | {m.date} |
| load average before / after (1, 5, 15 min) | {m.load_before} / {result.load_after} |

Image sets (generated: sample photos cropped, upscaled, plus gaussian noise, cached in
`bench/out/images/`):

{set_lines}

## Targets

{render_targets(result.targets)}

{target_defs}

## Measurements

Model and decode rows: medians of {ctx.repeats} repeat(s) after a warm-up (the full decode
over the first 8 images of a set). CPU bound, core and naive rows: medians over *paired
rounds*, each round timing the draft decode, the 1-thread inference, the core and the naive
handler back to back while sampling how much CPU other processes used; rounds where others
used more than {100 * QUIET_OTHER_LOAD:.0f} % of the CPUs are left out when at least
{MIN_QUIET_ROUNDS} quiet rounds remain. {noise}

{render_table(result.rows)}
"""


def _results_doc(result: BenchResult, sets: dict[str, ImageSet], ctx: BenchContext) -> Any:
    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return dataclasses.asdict(x)
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return {
        "machine": dataclasses.asdict(result.machine),
        "load_after": result.load_after,
        "elapsed_s": result.elapsed_s,
        "quick": ctx.quick,
        "repeats": ctx.repeats,
        "image_sets": {k: {"count": len(s.paths), "width": s.width, "height": s.height,
                           "mean_bytes": s.mean_bytes} for k, s in sets.items()},
        "rows": [dataclasses.asdict(r) for r in result.rows],
        "targets": [dict(dataclasses.asdict(t), passed=t.passed) for t in result.targets],
        "details": {k: plain(v) for k, v in ctx.details.items()},
    }
