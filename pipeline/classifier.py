"""The classifier: cached ONNX Runtime session, streaming decode, batched inference.

Three stages, as in every well-kept inference library:

- `preprocess` (pure): bytes -> `DecodedImage` (see `pipeline.decode`), run in a thread
  pool because Pillow releases the GIL while it decodes;
- `forward`: the only place `session.run` is called, on a stacked batch;
- `postprocess` (pure): logits -> probabilities -> top-k with labels.

`classify_many` streams: images are fetched and decoded by the pools while the session
runs on whatever is already decoded (never waiting for a full batch), results come out in
input order, and each item's failure stays that item's.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from pipeline.decode import DecodedImage, DecodeLimits, decode_image
from pipeline.errors import ModelError
from pipeline.manifest import ModelManifest
from pipeline.observe import NO_SPANS, Spans
from pipeline.prediction import ImageTimings, LabelScore, Prediction

__all__ = [
    "Classifier",
    "Prediction",
    "LabelScore",
    "ItemResult",
    "ImageTimings",
    "available_cpus",
    "create_session",
    "postprocess",
]

K = TypeVar("K")
Loader = Callable[[], bytes]
Timed = tuple[float, float]  # (fetch ms, decode ms) of one image


@dataclass(frozen=True)
class ItemResult(Generic[K]):
    """What became of one input: a prediction, or the exception that stopped it."""

    key: K
    prediction: Prediction | None = None
    error: BaseException | None = None
    nbytes: int | None = None
    timings: ImageTimings | None = None


@dataclass(eq=False)
class _Pending(Generic[K]):
    """One input inside `classify_many`: its decode, then its result."""

    key: K
    decoded: Future[tuple[DecodedImage, int, Timed]]
    result: ItemResult[K] | None = None


_DONE: Future[Any] = Future()
_DONE.set_result(None)


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS tells us)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, quota)
    return max(1, n)


def _cgroup_cpu_quota() -> int | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota == "max":
            return None
        return max(1, int(int(quota) / int(period) + 0.5))
    except (OSError, ValueError):
        return None


_SESSION_CACHE: dict[tuple[str, int], Any] = {}
_SESSION_LOCK = threading.Lock()


def create_session(manifest: ModelManifest, intra_op_threads: int | None = None) -> Any:
    """Build (once per process) the ONNX Runtime session for `manifest`.

    The file is verified against the manifest's sha256 first, so a corrupt model fails
    here, at start-up, and never shows up as a wave of rejected images.
    """
    threads = intra_op_threads or available_cpus()
    cache_key = (str(manifest.onnx_path.resolve()) + "#" + manifest.sha256, threads)
    with _SESSION_LOCK:
        if cache_key in _SESSION_CACHE:
            return _SESSION_CACHE[cache_key]
        path = manifest.verify_file()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Decoding threads share the CPUs with the session: spinning would steal them.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise ModelError(f"ONNX Runtime cannot load {path}: {e}") from e
        _check_io(session, manifest)
        _SESSION_CACHE[cache_key] = session
        return session


def _check_io(session: Any, manifest: ModelManifest) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if manifest.input_name not in inputs:
        raise ModelError(
            f"model {manifest.model_id}: the manifest names input {manifest.input_name!r}, "
            f"the ONNX file has {sorted(inputs)}"
        )
    if manifest.output_name not in outputs:
        raise ModelError(
            f"model {manifest.model_id}: the manifest names output "
            f"{manifest.output_name!r}, the ONNX file has {sorted(outputs)}"
        )
    shape = inputs[manifest.input_name].shape
    h, w = manifest.input_size
    expected = [3, h, w] if manifest.layout == "NCHW" else [h, w, 3]
    if len(shape) != 4 or any(
        isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)
    ):
        raise ModelError(
            f"model {manifest.model_id}: input shape {shape} does not match the manifest "
            f"({manifest.layout} {h}x{w})"
        )
    out_shape = outputs[manifest.output_name].shape
    width = out_shape[-1] if out_shape else None
    if isinstance(width, int) and width != manifest.num_outputs:
        raise ModelError(
            f"model {manifest.model_id}: the output has {width} values per image but the "
            f"manifest has {len(manifest.labels)} labels"
        )


def postprocess(logits: np.ndarray, manifest: ModelManifest) -> list[list[LabelScore]]:
    """Logits [N, C] -> top-k (label, index, score) per row. Pure numpy."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    labels = manifest.labels
    if manifest.activation == "softmax":
        z = x - x.max(axis=1, keepdims=True)
        e = np.exp(z)
        probs = e / e.sum(axis=1, keepdims=True)
    elif manifest.activation == "sigmoid":
        probs = 1.0 / (1.0 + np.exp(-x))
        if x.shape[1] == 1 and len(labels) == 2:  # binary: [negative, positive]
            probs = np.concatenate([1.0 - probs, probs], axis=1)
    else:
        probs = x
    k = min(manifest.top_k, probs.shape[1])
    out: list[list[LabelScore]] = []
    for row in probs:
        idx = np.argsort(-row, kind="stable")[:k]
        out.append([LabelScore(labels[i], int(i), float(row[i])) for i in idx])
    return out


class Classifier:
    """Classifies images with one cached session; safe to share between threads."""

    def __init__(
        self,
        manifest: ModelManifest,
        session: Any | None = None,
        *,
        batch_size: int = 16,
        decode_workers: int | None = None,
        fetch_workers: int = 4,
        intra_op_threads: int | None = None,
        limits: DecodeLimits | None = None,
        spans: Spans = NO_SPANS,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.manifest = manifest
        self.session = session or create_session(manifest, intra_op_threads)
        self.batch_size = batch_size
        self.decode_workers = decode_workers or available_cpus()
        if fetch_workers < 1:
            raise ValueError("fetch_workers must be at least 1")
        self.fetch_workers = fetch_workers
        self.limits = limits or DecodeLimits()
        self.spans = spans  # X-Ray subsegments around each decode and each batch's run
        self._pool: ThreadPoolExecutor | None = None
        self._fetch_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    # ---- the three stages --------------------------------------------------------------

    def preprocess(self, data: bytes) -> DecodedImage:
        return decode_image(data, self.manifest, self.limits)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a stacked batch, in chunks of at most `batch_size`."""
        outputs = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            (logits,) = self.session.run(
                [self.manifest.output_name], {self.manifest.input_name: chunk}
            )
            outputs.append(np.asarray(logits).reshape(len(chunk), -1))
        if not outputs:
            return np.zeros((0, self.manifest.num_outputs), dtype=np.float32)
        return np.concatenate(outputs, axis=0)

    def postprocess(self, logits: np.ndarray) -> list[list[LabelScore]]:
        return postprocess(logits, self.manifest)

    # ---- convenience -------------------------------------------------------------------

    def classify_bytes(self, data: bytes) -> Prediction:
        """One image, synchronously; raises the decode error if any."""
        (result,) = list(self.classify_many([(0, lambda: data)]))
        if result.error is not None:
            raise result.error
        assert result.prediction is not None
        return result.prediction

    def classify_many(self, items: Iterable[tuple[K, Loader]]) -> Iterator[ItemResult[K]]:
        """Fetch, decode and classify, streaming, in input order.

        `items` are (key, loader) pairs. Loaders run in a fetch pool (`fetch_workers`
        threads: an S3 read is mostly waiting, so several run at once) and hand the bytes
        to the decode pool (`decode_workers`, one per CPU), so fetching, decoding and
        inference overlap. Any exception from a loader or the decoder becomes that item's
        `error`.

        The model never waits for a full batch: whenever the session is free it runs on
        every image decoded so far (up to `batch_size`), in whatever order decoding
        finished, so the first result of a short call comes after one decode, not after
        `batch_size` of them; while the session runs, the pools keep decoding, so on long
        runs batches fill up by themselves. Results still come out in input order.
        """
        fetch_pool, decode_pool = self._executors()
        # Raw bytes are the big allocation (3 MB per photo): hold at most this many at
        # once, from the start of a fetch to the end of its decode. A slot is taken here,
        # before the fetch is queued, never by a fetch thread: the pools are shared by
        # concurrent calls (a local stack runs two invocations in one process), and a fetch
        # thread waiting for one call's slot would hold up every other call's fetches.
        slots = threading.BoundedSemaphore(self.fetch_workers + self.decode_workers)

        # Decoded tensors wait here (bounded by the window) until the session takes them;
        # results wait until every earlier item has one.
        window = max(2 * self.batch_size, 2 * self.decode_workers, self.fetch_workers)
        pending: deque[_Pending[K]] = deque()
        iterator = iter(items)
        exhausted = False

        while True:
            # Queue more while slots are free; wait for one only when nothing is queued.
            while (not exhausted and len(pending) < window
                   and slots.acquire(blocking=not pending)):
                try:
                    key, loader = next(iterator)
                except StopIteration:
                    slots.release()
                    exhausted = True
                    break
                pending.append(_Pending(key, self._fetch_then_decode(
                    loader, slots, fetch_pool, decode_pool)))
            while pending and pending[0].result is not None:
                result = pending.popleft().result
                assert result is not None
                yield result
            if not pending:
                if exhausted:
                    break
                continue
            batch = self._take_decoded(pending)
            if batch:
                self._run_batch(batch)
            elif all(p.result is not None or p.decoded.done() for p in pending):
                continue  # failures were just recorded: yield them
            else:
                wait([p.decoded for p in pending if p.result is None],
                     return_when=FIRST_COMPLETED)

    def _fetch_then_decode(
        self, loader: Loader, slots: threading.BoundedSemaphore,
        fetch_pool: ThreadPoolExecutor, decode_pool: ThreadPoolExecutor,
    ) -> Future[tuple[DecodedImage, int, Timed]]:
        """Stages one and two for one item: queue `loader` on the fetch pool, hand its bytes
        to the decode pool; the future is the decode's. The caller took a slot of `slots`;
        it is given back when the decode ends, or when the fetch fails."""
        decoded: Future[tuple[DecodedImage, int, Timed]] = Future()

        def finish(future: Future[tuple[DecodedImage, int, Timed]]) -> None:
            slots.release()
            try:
                decoded.set_result(future.result())
            except BaseException as e:  # noqa: BLE001 - handed to the item below
                decoded.set_exception(e)

        def fetch_then_decode() -> None:
            try:
                started = time.perf_counter()
                data = loader()
                future = decode_pool.submit(self._decode_sized, data,
                                            (time.perf_counter() - started) * 1000)
            except BaseException as e:  # noqa: BLE001 - handed to the item below
                slots.release()
                decoded.set_exception(e)
                return
            future.add_done_callback(finish)

        fetch_pool.submit(fetch_then_decode)
        return decoded

    def _take_decoded(self, pending: Iterable[_Pending[K]]) -> list[_Pending[K]]:
        """Up to `batch_size` items whose decode has finished; failures get their result."""
        batch: list[_Pending[K]] = []
        for p in pending:
            if p.result is not None or not p.decoded.done():
                continue
            error = p.decoded.exception()
            if error is not None:
                if not isinstance(error, Exception):
                    raise error  # KeyboardInterrupt, SystemExit: not one item's failure
                p.result = ItemResult(key=p.key, error=error)
                continue
            batch.append(p)
            if len(batch) == self.batch_size:
                break
        return batch

    def _run_batch(self, batch: list[_Pending[K]]) -> None:
        decoded = [p.decoded.result() for p in batch]
        started = time.perf_counter()
        try:
            with self.spans.span("inference"):
                tops = self.postprocess(self.forward(np.stack([d.tensor for d, _, _ in decoded])))
        except Exception as e:  # noqa: BLE001 - an inference failure fails this batch only
            for p, (_, nbytes, _) in zip(batch, decoded, strict=True):
                p.result = ItemResult(key=p.key, error=e, nbytes=nbytes)
            return
        share_ms = (time.perf_counter() - started) * 1000 / len(batch)
        for p, (image, nbytes, (fetch_ms, decode_ms)), top in zip(batch, decoded, tops,
                                                                  strict=True):
            p.result = ItemResult(
                key=p.key,
                prediction=Prediction(
                    label=top[0].label,
                    score=top[0].score,
                    top_k=tuple(top),
                    width=image.width,
                    height=image.height,
                    format=image.format,
                ),
                nbytes=nbytes,
                timings=ImageTimings(fetch_ms, decode_ms, share_ms),
            )
            p.decoded = _DONE  # the tensor is no longer needed: let it go

    def _decode_sized(self, data: bytes, fetch_ms: float) -> tuple[DecodedImage, int, Timed]:
        started = time.perf_counter()
        with self.spans.span("decode"):
            decoded = self.preprocess(data)
        return decoded, len(data), (fetch_ms, (time.perf_counter() - started) * 1000)

    def _executors(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        with self._pool_lock:
            if self._pool is None or self._fetch_pool is None:
                self._fetch_pool = ThreadPoolExecutor(
                    max_workers=self.fetch_workers, thread_name_prefix="imgpipe-fetch"
                )
                self._pool = ThreadPoolExecutor(
                    max_workers=self.decode_workers, thread_name_prefix="imgpipe-decode"
                )
            return self._fetch_pool, self._pool

    def close(self) -> None:
        with self._pool_lock:
            for pool in (self._fetch_pool, self._pool):
                if pool is not None:
                    pool.shutdown(wait=True)
            self._pool = self._fetch_pool = None

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
