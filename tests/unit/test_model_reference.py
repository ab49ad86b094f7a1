"""The committed EfficientNet-Lite0 model against what `model/export.py` recorded from PyTorch,
and real predictions on the sample photos."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.classifier import Classifier
from pipeline.decode import normalize_pixels, prepare_pixels
from pipeline.manifest import ModelManifest
from pipeline.modelstore import resolve_model

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "model" / "reference"
SAMPLES = sorted(p.name for p in (ROOT / "samples").glob("*.jpg"))
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def classifier(default_manifest: ModelManifest) -> Iterator[Classifier]:
    with Classifier(default_manifest, batch_size=8) as clf:
        yield clf


def test_manifest_sha256_matches_the_committed_file(default_manifest: ModelManifest) -> None:
    digest = hashlib.sha256((ROOT / "model" / "efficientnet_lite0.onnx").read_bytes())
    assert default_manifest.sha256 == digest.hexdigest()
    assert resolve_model("") == default_manifest  # the packaged model verifies


def test_labels_are_the_1000_imagenet_classes(default_manifest: ModelManifest) -> None:
    labels = default_manifest.labels
    assert len(labels) == 1000 == len(set(labels))
    assert labels[0] == "tench" and labels[967] == "espresso" and labels[281] == "tabby"


def test_onnx_runtime_matches_the_pytorch_logits(classifier: Classifier) -> None:
    reference = json.loads((REFERENCE / "logits.json").read_text())
    assert sorted(reference) == sorted(Path(s).stem for s in SAMPLES)
    stems = sorted(reference)
    batch = np.stack(
        [
            normalize_pixels(np.asarray(Image.open(REFERENCE / f"{stem}.png").convert("RGB")),
                             classifier.manifest)
            for stem in stems
        ]
    )
    got = classifier.forward(batch)
    expected = np.array([reference[stem] for stem in stems])
    assert got.shape == expected.shape == (len(stems), 1000)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("name", SAMPLES)
def test_reference_pixels_are_what_decoding_the_sample_gives(
    name: str, default_manifest: ModelManifest, sample_bytes: Callable[[str], bytes]
) -> None:
    # The stored pixels are prepare_pixels' output at export time: if decoding drifts, the
    # logits check above no longer covers what the pipeline really feeds the model.
    pixels, *_ = prepare_pixels(sample_bytes(name), default_manifest)
    stored = np.asarray(Image.open(REFERENCE / name.replace(".jpg", ".png")).convert("RGB"))
    diff = np.abs(pixels.astype(int) - stored)
    assert diff.mean() < 0.5 and diff.max() <= 8


def test_coffee_is_espresso(classifier: Classifier, sample_bytes: Callable[[str], bytes]) -> None:
    prediction = classifier.classify_bytes(sample_bytes("coffee.jpg"))
    assert prediction.label == "espresso"
    assert prediction.score > 0.3
    assert (prediction.width, prediction.height, prediction.format) == (600, 400, "JPEG")


def test_chelsea_is_a_cat(classifier: Classifier, sample_bytes: Callable[[str], bytes]) -> None:
    prediction = classifier.classify_bytes(sample_bytes("chelsea.jpg"))
    top3 = [t.label for t in prediction.top_k[:3]]
    assert CATS & set(top3), top3


def test_batch_results_equal_single_results(
    classifier: Classifier, sample_bytes: Callable[[str], bytes]
) -> None:
    datas = [sample_bytes(name) for name in SAMPLES]
    batched = list(classifier.classify_many((name, (lambda d=d: d)) for name, d in
                                            zip(SAMPLES, datas, strict=True)))
    assert [r.key for r in batched] == SAMPLES
    for result, data in zip(batched, datas, strict=True):
        single = classifier.classify_bytes(data)
        assert result.prediction is not None
        assert [t.label for t in result.prediction.top_k] == [t.label for t in single.top_k]
        np.testing.assert_allclose([t.score for t in result.prediction.top_k],
                                   [t.score for t in single.top_k], atol=1e-5)
    scores = [sum(t.score for t in r.prediction.top_k) for r in batched if r.prediction]
    assert all(0 < s <= 1 + 1e-9 for s in scores)
