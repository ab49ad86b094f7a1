"""The classifier: per-item failures, batching through `forward`, session caching."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.classifier import (
    Classifier,
    LabelScore,
    available_cpus,
    create_session,
    postprocess,
)
from pipeline.errors import ModelError, PermanentError, TransientError
from pipeline.manifest import ModelManifest, load_manifest
from tests.tiny_models import BINARY_SIGMOID, EFFICIENTNET_LITE0, TinyModel

MakeTiny = Callable[..., TinyModel]

LABELS = ("cat", "dog", "espresso", "rocket", "galaxy")


def manifest(**changes: Any) -> ModelManifest:
    raw: dict[str, Any] = {
        "name": "fake", "version": "1", "file": "fake.onnx", "sha256": "0" * 64,
        "input_size": [32, 32], "labels": list(LABELS),
        "resize": {"method": "stretch", "interpolation": "nearest"},
    }
    raw.update(changes)
    return ModelManifest.from_dict(raw)


def png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


class FakeSession:
    """Stands in for an ONNX Runtime session: logits are the per-image channel means
    (padded with zeros), so every row can be traced back to its image. `run` may only be
    called from inside `Classifier.forward`."""

    def __init__(self, outputs: int = len(LABELS), fail_on_call: int | None = None) -> None:
        self.outputs = outputs
        self.fail_on_call = fail_on_call
        self.batches: list[int] = []
        self.reds: list[list[float]] = []  # each batch's images, by their red channel's mean
        self.in_forward = threading.local()
        self.ran = threading.Event()  # set once the first batch has run

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        assert getattr(self.in_forward, "active", False), "session.run called outside forward"
        assert names == ["logits"] and list(feeds) == ["input"]
        (x,) = feeds.values()
        assert x.dtype == np.float32 and x.flags.c_contiguous
        self.batches.append(len(x))
        self.reds.append([round(float(v), 3) for v in x[:, 0].mean(axis=(1, 2))])
        self.ran.set()
        if self.fail_on_call == len(self.batches):
            raise RuntimeError("the accelerator caught fire")
        logits = np.zeros((len(x), self.outputs), dtype=np.float32)
        logits[:, :3] = x.mean(axis=(2, 3))
        return [logits]


@pytest.fixture
def fake_session(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSession]:
    session = FakeSession()
    real_forward = Classifier.forward

    def forward(self: Classifier, batch: np.ndarray) -> np.ndarray:
        session.in_forward.active = True
        try:
            return real_forward(self, batch)
        finally:
            session.in_forward.active = False

    monkeypatch.setattr(Classifier, "forward", forward)
    yield session


def items(datas: list[bytes]) -> list[tuple[int, Callable[[], bytes]]]:
    return [(i, (lambda d=d: d)) for i, d in enumerate(datas)]


# ---- per-item failures ----------------------------------------------------------------------


def test_one_bad_image_does_not_affect_the_others(tiny_model: MakeTiny) -> None:
    m = load_manifest(tiny_model(EFFICIENTNET_LITE0).manifest_path)
    good = [png((250, 20, 20)), png((20, 250, 20), (300, 80)), png((20, 20, 250), (17, 90)),
            png((120, 120, 120))]
    bad_text = b"this is not a photo, it is a note\n"
    bad_truncated = good[0][:40]
    inputs = [good[0], bad_text, good[1], good[2], bad_truncated, good[3]]

    with Classifier(m, batch_size=2, decode_workers=2, intra_op_threads=1) as clf:
        results = list(clf.classify_many(items(inputs)))
        alone = [clf.classify_bytes(d) for d in good]

    assert [r.key for r in results] == list(range(len(inputs)))
    for i in (1, 4):
        assert results[i].prediction is None
        assert isinstance(results[i].error, PermanentError)
    assert "plain text" in str(results[1].error)
    good_results = [results[i] for i in (0, 2, 3, 5)]
    assert len({r.prediction.label for r in good_results if r.prediction}) > 1  # distinct
    for r, single, data in zip(good_results, alone, good, strict=True):
        assert r.error is None and r.prediction is not None
        assert r.nbytes == len(data)
        assert r.prediction.label == single.label
        assert [t.label for t in r.prediction.top_k] == [t.label for t in single.top_k]
        np.testing.assert_allclose(
            [t.score for t in r.prediction.top_k], [t.score for t in single.top_k], atol=1e-6
        )
        assert (r.prediction.width, r.prediction.height) == (single.width, single.height)


def test_loader_exceptions_become_that_items_error(fake_session: FakeSession) -> None:
    timeout = TransientError("S3 timed out; try again")

    def flaky() -> bytes:
        raise timeout

    def gone() -> bytes:
        raise FileNotFoundError("no such object")

    work: list[tuple[str, Callable[[], bytes]]] = [
        ("a", lambda: png((10, 10, 10))),
        ("flaky", flaky),
        ("b", lambda: png((200, 10, 10))),
        ("gone", gone),
    ]
    with Classifier(manifest(), fake_session, batch_size=8, decode_workers=2) as clf:
        results = {r.key: r for r in clf.classify_many(work)}

    assert list(results) == ["a", "flaky", "b", "gone"]
    assert results["flaky"].error is timeout
    assert isinstance(results["gone"].error, FileNotFoundError)
    assert results["a"].prediction is not None and results["b"].prediction is not None
    assert results["flaky"].nbytes is None


def test_an_inference_failure_fails_only_its_batch(fake_session: FakeSession) -> None:
    fake_session.fail_on_call = 2
    colours = [(i * 20, 0, 0) for i in range(7)]
    with Classifier(manifest(), fake_session, batch_size=3, decode_workers=1) as clf:
        results = list(clf.classify_many(items([png(c) for c in colours])))
    assert len(fake_session.batches) >= 3 and max(fake_session.batches) <= 3
    failed = {int(red) // 20 for red in fake_session.reds[1]}
    assert [r.error is not None for r in results] == [i in failed for i in range(7)]
    assert all("caught fire" in str(results[i].error) for i in failed)
    assert [r.nbytes for r in results] == [len(png(c)) for c in colours]


def test_classify_bytes_raises_the_decode_error(fake_session: FakeSession) -> None:
    with Classifier(manifest(), fake_session) as clf, pytest.raises(PermanentError,
                                                                    match="empty file"):
        clf.classify_bytes(b"")
    assert fake_session.batches == []


# ---- batching -------------------------------------------------------------------------------


def test_forward_is_the_only_run_caller_and_chunks_to_batch_size(
    fake_session: FakeSession,
) -> None:
    colours = [(i * 25, 255 - i * 25, (i * 70) % 256) for i in range(10)]
    with Classifier(manifest(), fake_session, batch_size=4, decode_workers=3) as clf:
        results = list(clf.classify_many(items([png(c) for c in colours])))

    assert max(fake_session.batches) <= 4 and sum(fake_session.batches) == 10
    assert [r.key for r in results] == list(range(10))
    # Each row went back to its own image: the fake's logits are the image's means.
    m = manifest()
    for r, colour in zip(results, colours, strict=True):
        logits = np.array([*colour, 0.0, 0.0])  # nearest + identity normalisation
        (top,) = postprocess(logits[None], m)
        assert r.prediction is not None
        assert [t.label for t in r.prediction.top_k] == [t.label for t in top]


def test_forward_directly_chunks_and_keeps_row_order(fake_session: FakeSession) -> None:
    batch = np.zeros((7, 3, 32, 32), dtype=np.float32)
    batch[:, 0] = np.arange(7, dtype=np.float32)[:, None, None]
    with Classifier(manifest(), fake_session, batch_size=3) as clf:
        out = clf.forward(batch)
        empty = clf.forward(batch[:0])
    assert fake_session.batches == [3, 3, 1]
    np.testing.assert_array_equal(out[:, 0], np.arange(7))
    assert out.shape == (7, len(LABELS))
    assert empty.shape == (0, len(LABELS))


def test_results_stream_in_input_order_with_many_items(fake_session: FakeSession) -> None:
    datas = [png((i, i, i), (8 + i % 5, 8 + i % 7)) if i % 9 else b"" for i in range(40)]
    with Classifier(manifest(), fake_session, batch_size=4, decode_workers=2) as clf:
        results = list(clf.classify_many(items(datas)))
    assert [r.key for r in results] == list(range(40))
    assert [r.error is not None for r in results] == [i % 9 == 0 for i in range(40)]
    assert max(fake_session.batches) <= 4 and sum(fake_session.batches) == 40 - 5


def test_the_model_runs_before_the_last_photo_is_decoded(fake_session: FakeSession) -> None:
    # The last photo's loader waits for the session's first run: with a batch of 16 and
    # only 3 photos, a classifier that waits for a full batch (or for every decode) would
    # never run the model before it, and the wait would time out.
    ran_before_last: list[bool] = []

    def last() -> bytes:
        ran_before_last.append(fake_session.ran.wait(10))
        return png((200, 0, 0))

    work = [(0, lambda: png((20, 0, 0))), (1, lambda: png((100, 0, 0))), (2, last)]
    with Classifier(manifest(), fake_session, batch_size=16, decode_workers=2) as clf:
        results = list(clf.classify_many(work))
    assert ran_before_last == [True]
    assert [r.key for r in results] == [0, 1, 2]
    assert [r.error for r in results] == [None] * 3
    assert 200.0 not in fake_session.reds[0]  # the first run did not include the last photo


def test_later_photos_run_first_when_an_earlier_decode_is_slow(
    fake_session: FakeSession,
) -> None:
    # Photo 0 is slow (its loader waits for the first run); the others are run meanwhile,
    # a failure among them stays its own, and results still come out in input order.
    def slow() -> bytes:
        assert fake_session.ran.wait(10)
        return png((10, 0, 0))

    datas = [png((20 * i, 0, 0)) if i != 3 else b"" for i in range(6)]
    work = [(0, slow)] + [(i, (lambda d=d: d)) for i, d in enumerate(datas) if i]
    with Classifier(manifest(), fake_session, batch_size=8, decode_workers=2,
                    fetch_workers=2) as clf:
        results = list(clf.classify_many(work))
    assert [r.key for r in results] == list(range(6))
    assert [r.error is None for r in results] == [True, True, True, False, True, True]
    assert "empty file" in str(results[3].error)
    assert 10.0 not in fake_session.reds[0]  # the first run went ahead without photo 0
    assert sum(red.count(10.0) for red in fake_session.reds) == 1
    assert sum(fake_session.batches) == 5


def test_memory_stays_bounded_when_the_consumer_is_slow(fake_session: FakeSession) -> None:
    # However slowly results are consumed, at most a window of photos is fetched ahead.
    started = 0
    lock = threading.Lock()

    def loader(i: int) -> Callable[[], bytes]:
        def load() -> bytes:
            nonlocal started
            with lock:
                started += 1
            return png((i % 250, 0, 0))

        return load

    ahead = []
    with Classifier(manifest(), fake_session, batch_size=4, decode_workers=2,
                    fetch_workers=2) as clf:
        for n, _ in enumerate(clf.classify_many((i, loader(i)) for i in range(60)), 1):
            with lock:
                ahead.append(started - n)
    window = max(2 * 4, 2 * 2, 2)
    assert max(ahead) <= window
    assert sum(fake_session.batches) == 60 and max(fake_session.batches) <= 4


def test_no_items_no_results(fake_session: FakeSession) -> None:
    with Classifier(manifest(), fake_session) as clf:
        assert list(clf.classify_many([])) == []
    assert fake_session.batches == []


def test_batch_size_must_be_positive(fake_session: FakeSession) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Classifier(manifest(), fake_session, batch_size=0)


# ---- postprocess ----------------------------------------------------------------------------


def test_postprocess_softmax_top_k() -> None:
    m = manifest(top_k=3)
    logits = np.log(np.array([[1.0, 2.0, 4.0, 1.0, 2.0]]))  # probabilities 0.1 0.2 0.4 ...
    (top,) = postprocess(logits, m)
    assert top == [
        LabelScore("espresso", 2, pytest.approx(0.4)),
        LabelScore("dog", 1, pytest.approx(0.2)),  # ties keep label order
        LabelScore("galaxy", 4, pytest.approx(0.2)),
    ]


def test_postprocess_binary_sigmoid_and_none() -> None:
    binary = manifest(labels=["negative", "positive"], activation="sigmoid")
    (top,) = postprocess(np.array([[np.log(3.0)]]), binary)  # sigmoid(ln 3) = 0.75
    assert [(t.label, t.index) for t in top] == [("positive", 1), ("negative", 0)]
    assert [t.score for t in top] == pytest.approx([0.75, 0.25])

    raw = manifest(labels=["a", "b"], activation="none", top_k=1)
    (top,) = postprocess(np.array([[-3.5, 7.25]]), raw)
    assert top == [LabelScore("b", 1, 7.25)]


def test_postprocess_softmax_is_stable_for_huge_logits() -> None:
    (top,) = postprocess(np.array([[1000.0, 0.0, -1000.0, 999.0, 0.0]]), manifest())
    assert all(np.isfinite(t.score) for t in top)
    assert sum(t.score for t in top) == pytest.approx(1.0)


# ---- the session ----------------------------------------------------------------------------


def test_session_is_cached_per_model(tiny_model: MakeTiny) -> None:
    m = load_manifest(tiny_model(EFFICIENTNET_LITE0).manifest_path)
    first = Classifier(m, intra_op_threads=1)
    second = Classifier(load_manifest(m.onnx_path.parent), intra_op_threads=1)
    assert first.session is second.session
    assert create_session(m, intra_op_threads=1) is first.session
    other = load_manifest(tiny_model(BINARY_SIGMOID, name="other").manifest_path)
    assert create_session(other, intra_op_threads=1) is not first.session
    first.close()
    second.close()


def test_session_cache_is_keyed_by_file_and_sha256(tiny_model: MakeTiny) -> None:
    model = tiny_model(EFFICIENTNET_LITE0)
    m = load_manifest(model.manifest_path)
    session = create_session(m, intra_op_threads=1)
    # another file (here corrupt) is never served from the cache: it is verified and fails
    changed = load_manifest(tiny_model(EFFICIENTNET_LITE0, name="copy").manifest_path)
    changed.onnx_path.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="corrupt"):
        create_session(changed, intra_op_threads=1)
    assert create_session(m, intra_op_threads=1) is session


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_are_set_explicitly(threads: int, tiny_model: MakeTiny) -> None:
    m = load_manifest(tiny_model(EFFICIENTNET_LITE0).manifest_path)
    options = create_session(m, intra_op_threads=threads).get_session_options()
    assert options.intra_op_num_threads == threads
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_default_thread_count_follows_available_cpus(tiny_model: MakeTiny) -> None:
    m = load_manifest(tiny_model(EFFICIENTNET_LITE0).manifest_path)
    with Classifier(m) as clf:
        options = clf.session.get_session_options()
        assert options.intra_op_num_threads == available_cpus()
        assert clf.decode_workers == available_cpus()
    assert 1 <= available_cpus() <= (Path("/proc/cpuinfo").read_text().count("processor\t")
                                      or 1024)


def test_fetches_run_concurrently_beyond_the_decode_threads(fake_session: FakeSession) -> None:
    # Four loaders that can only finish together: they pass the barrier only if four run
    # at once, which one decode thread alone could never do (S3 reads are mostly waiting).
    import threading

    barrier = threading.Barrier(4, timeout=10)

    def loader(colour: tuple[int, int, int]) -> Callable[[], bytes]:
        def load() -> bytes:
            barrier.wait()
            return png(colour)

        return load

    work = [(i, loader((i * 40, 0, 0))) for i in range(4)]
    with Classifier(manifest(), fake_session, batch_size=4, decode_workers=1,
                    fetch_workers=4) as clf:
        results = list(clf.classify_many(work))
    assert [r.error for r in results] == [None] * 4
    assert sum(fake_session.batches) == 4


def test_a_stalled_call_does_not_hold_up_the_fetches_of_another(
    fake_session: FakeSession,
) -> None:
    # Concurrent calls share the pools (the local stack runs invocations side by side in
    # one process). A call whose decodes are stuck holds its own memory slots, never the
    # fetch threads: the other call's photos are still fetched.
    release = threading.Event()
    other_fetched = threading.Event()

    class Stalling(Classifier):
        def preprocess(self, data: bytes) -> Any:
            if data == b"stall":
                release.wait(60)
                raise PermanentError("stalled on purpose")
            return super().preprocess(data)

    def fetch_other() -> bytes:
        other_fetched.set()
        return png((0, 90, 0))

    with Stalling(manifest(), fake_session, batch_size=4, decode_workers=1,
                  fetch_workers=2) as clf:
        stalled: list[Any] = []
        first = threading.Thread(target=lambda: stalled.extend(
            clf.classify_many((i, lambda: b"stall") for i in range(20))))
        first.start()
        other: list[Any] = []
        second = threading.Thread(target=lambda: other.extend(
            clf.classify_many((i, fetch_other) for i in range(3))))
        second.start()
        fetched_while_stalled = other_fetched.wait(10)
        release.set()
        first.join(10)
        second.join(10)
    assert fetched_while_stalled
    assert [r.error for r in other] == [None] * 3
    assert len(stalled) == 20
    assert all(isinstance(r.error, PermanentError) for r in stalled)


# ---- timings ----------------------------------------------------------------------------


def test_each_result_carries_its_fetch_decode_and_inference_share(
    fake_session: FakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader's time is the fetch, the preprocess's the decode, and the batch's model
    run is shared out equally among its images (the clock is made to step, so every duration
    is at least one step)."""
    import time

    ticks = iter(range(0, 10_000_000, 1))
    lock = threading.Lock()

    def clock() -> float:  # every reading 1 ms after the last: durations count readings
        with lock:
            return next(ticks) / 1000

    monkeypatch.setattr(time, "perf_counter", clock)
    colours = [(i * 30, 0, 0) for i in range(5)]
    with Classifier(manifest(), fake_session, batch_size=4, decode_workers=1,
                    fetch_workers=1) as clf:
        results = list(clf.classify_many(items([png(c) for c in colours])))
    # The model runs on whatever is decoded, so the batches' sizes vary from run to run;
    # with one fetch and one decode worker they are consecutive slices of the input.
    assert sum(fake_session.batches) == 5 and max(fake_session.batches) <= 4
    timings = [r.timings for r in results]
    for t in timings:
        assert t is not None and t.fetch_ms > 0 and t.decode_ms > 0 and t.inference_ms > 0
    start = 0
    for size in fake_session.batches:
        shares = {t.inference_ms for t in timings[start:start + size] if t is not None}
        assert len(shares) == 1, (fake_session.batches, timings)  # one batch, one share each
        assert shares.pop() * size >= 1.0 - 1e-9  # the run took at least one clock step
        start += size


def test_a_failed_item_has_no_timings(fake_session: FakeSession) -> None:
    with Classifier(manifest(), fake_session, batch_size=2) as clf:
        (bad, good) = list(clf.classify_many(items([b"not an image", png((1, 2, 3))])))
    assert bad.error is not None and bad.timings is None
    assert good.timings is not None
