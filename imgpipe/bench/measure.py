"""Measurements in this process: the model limit, decode, the core end to end, a naive
handler, and the paired rounds the core's targets are about.

Each `measure_*` returns a small frozen dataclass (kept in results.json's details); the
building blocks (`random_batch`, `one_thread_inference`, `draft_decoder`, `core_runner`)
are callables returning how many images they handled, for `timing.time_repeats`.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgpipe.bench.context import CORE_BATCH, ImageSet
from imgpipe.bench.images import file_loader, read_all
from imgpipe.bench.timing import cpu_snapshot, other_load_between, time_once, time_repeats


@dataclass(frozen=True)
class ModelThroughput:
    """The model alone: images/s on pre-made tensors at one batch size and thread count."""

    batch: int
    threads: int
    images_per_s: float  # median over repeats
    ms_per_image: float
    samples: tuple[float, ...]  # img/s of each repeat


@dataclass(frozen=True)
class DecodeTiming:
    """Bytes in memory to the model's tensor, one thread: ms per image."""

    image_set: str
    path: str  # "draft" | "full"
    ms_per_image: float  # median over repeats of (time for the set / images)
    samples: tuple[float, ...]


@dataclass(frozen=True)
class Throughput:
    """Images/s of the core or the naive handler over an image set."""

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


def random_batch(manifest: Any, batch: int) -> dict[str, np.ndarray]:
    """A feed of `batch` pre-made input tensors in the model's layout (no decode)."""
    h, w = manifest.input_size
    shape = (batch, 3, h, w) if manifest.layout == "NCHW" else (batch, h, w, 3)
    return {manifest.input_name: np.random.default_rng(0).standard_normal(
        shape, dtype=np.float32)}


def one_thread_inference(manifest: Any, batch: int = CORE_BATCH) -> Callable[[], int]:
    """Two runs of a `batch`-image tensor on a session with 1 intra-op thread: the
    inference half of the CPU bound."""
    from pipeline.classifier import create_session

    session = create_session(manifest, 1)
    feed = random_batch(manifest, batch)
    calls = 2

    def infer() -> int:
        for _ in range(calls):
            session.run([manifest.output_name], feed)
        return calls * batch

    return infer


def draft_decoder(manifest: Any, image_set: ImageSet, limit: int | None) -> Callable[[], int]:
    """`decode_image` (DCT scaling, the core's path) over (the first `limit` files of) the
    set, from bytes in memory, on this thread: the decode half of the CPU bound."""
    from pipeline.decode import decode_image

    blobs = read_all(image_set.paths[:limit] if limit else image_set.paths)

    def draft() -> int:
        for data in blobs:
            decode_image(data, manifest)
        return len(blobs)

    return draft


def measure_model(
    manifest: Any, batch: int, threads: int | None, repeats: int, min_images: int = 64
) -> ModelThroughput:
    """Raw session throughput on pre-made tensors (no decode), in the core's session setup."""
    from pipeline.classifier import available_cpus, create_session

    n_threads = threads or available_cpus()
    session = create_session(manifest, n_threads)
    feed = random_batch(manifest, batch)
    calls = max(1, -(-min_images // batch))

    def run() -> int:
        for _ in range(calls):
            session.run([manifest.output_name], feed)
        return calls * batch

    rates = time_repeats(run, repeats, warmup=1)
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

    blobs = read_all(image_set.paths[:limit] if limit else image_set.paths)

    def run() -> int:
        for data in blobs:
            if path == "draft":
                decode_image(data, manifest)
            else:
                _decode_full(data, manifest)
        return len(blobs)

    rates = time_repeats(run, repeats, warmup=0 if path == "full" else 1)
    ms = [1000.0 / r for r in rates]
    return DecodeTiming(image_set.name, path, statistics.median(ms), tuple(ms))


def core_runner(manifest: Any, paths: Sequence[Path], batch_size: int) -> tuple[
    Callable[[], int], Callable[[], None]
]:
    """(run, close): `run` classifies the files with `Classifier.classify_many`, loaders
    reading each file as the Lambda reads S3 bytes; `close` frees the classifier."""
    from pipeline.classifier import Classifier

    clf = Classifier(manifest, batch_size=batch_size)

    def run() -> int:
        n = 0
        for result in clf.classify_many((p, file_loader(p)) for p in paths):
            if result.prediction is None:
                raise RuntimeError(f"core failed on {result.key}: {result.error}")
            n += 1
        return n

    return run, clf.close


def measure_core(
    manifest: Any, image_set: ImageSet, repeats: int, batch_size: int = CORE_BATCH
) -> Throughput:
    """`Classifier.classify_many` over the set, loaders reading the files (like S3 bytes)."""
    run, close = core_runner(manifest, image_set.paths, batch_size)
    try:
        rates = time_repeats(run, repeats, warmup=1)
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
    rates = time_repeats(_naive_runner(manifest, paths), repeats, warmup=1)
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
    draft = draft_decoder(manifest, image_set, draft_limit)
    infer = one_thread_inference(manifest, batch_size)
    core, close = core_runner(manifest, image_set.paths, batch_size)
    naive = _naive_runner(manifest, image_set.paths[:naive_limit] if naive_limit
                          else image_set.paths)
    out = []
    try:
        for fn in (draft, infer, core, naive):  # warm-up
            fn()
        for _ in range(rounds):
            before = cpu_snapshot()
            draft_ips, infer_ips = time_once(draft), time_once(infer)
            core_ips, naive_ips = time_once(core), time_once(naive)
            other = other_load_between(before, cpu_snapshot())
            d_ms, i_ms = 1000.0 / draft_ips, 1000.0 / infer_ips
            bound = cpus * 1000.0 / (d_ms + i_ms)
            out.append(Round(d_ms, i_ms, bound, core_ips, naive_ips, other,
                             bound * (1.0 - other)))
    finally:
        close()
    return out

