"""EfficientNet-Lite2, the more accurate model of the repository (model/efficientnet-lite2/):
loaded by its folder as the functions load a model, it gives PyTorch's logits on the sample
photos and classifies them; it stays out of the Lambda package and is no packaged name."""

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
from pipeline.errors import ModelError
from pipeline.manifest import ModelManifest
from pipeline.modelstore import NOT_PACKAGED, packaged_models, resolve_model
from tools.lambda_package import model_files

ROOT = Path(__file__).resolve().parents[2]
LITE2 = ROOT / "model" / "efficientnet-lite2"
REFERENCE = LITE2 / "reference"
SAMPLES = sorted((ROOT / "samples").glob("*.jpg"))
TOLERANCE = 1e-4  # as for Lite0 (tests/unit/test_model_reference.py, model/export.py)


@pytest.fixture(scope="module")
def lite2() -> ModelManifest:
    return resolve_model(str(LITE2))  # manifest, labels and sha256, as the functions do


@pytest.fixture(scope="module")
def classifier(lite2: ModelManifest) -> Iterator[Classifier]:
    with Classifier(lite2, batch_size=8) as clf:
        yield clf


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    logits = json.loads((REFERENCE / "logits.json").read_text("utf-8"))
    return {stem: np.asarray(values) for stem, values in logits.items()}


def test_the_folder_describes_lite2(lite2: ModelManifest, default_manifest: ModelManifest
                                    ) -> None:
    assert lite2.model_id == "efficientnet-lite2@1"
    digest = hashlib.sha256((LITE2 / "efficientnet_lite2.onnx").read_bytes()).hexdigest()
    assert lite2.sha256 == digest
    assert lite2.input_size == (260, 260) and lite2.layout == "NCHW"
    # The Lite models' evaluation crop: size / (size + 32) of the short side.
    assert lite2.resize.crop_fraction == 260 / 292
    assert default_manifest.resize.crop_fraction == 224 / 256
    same = ("normalize", "activation", "labels", "input_name", "output_name", "top_k")
    assert {f: getattr(lite2, f) for f in same} == {f: getattr(default_manifest, f)
                                                    for f in same}


def test_lite2_is_not_in_the_lambda_package_nor_a_packaged_name() -> None:
    assert (LITE2 / NOT_PACKAGED).is_file()
    assert "efficientnet-lite2" not in packaged_models()
    assert set(packaged_models()) == {"efficientnet-lite0", "efficientnet-lite0-int8"}
    shipped = {p.as_posix() for p in model_files()}
    assert "model/efficientnet_lite0.onnx" in shipped
    assert not [p for p in shipped if p.startswith("model/efficientnet-lite2/")]
    with pytest.raises(ModelError, match=r"'efficientnet-lite2' is not packaged with the "
                                         r"functions .*model/efficientnet-lite2.*s3://"):
        resolve_model("efficientnet-lite2")


def test_onnx_runtime_matches_the_pytorch_logits(classifier: Classifier,
                                                 reference: dict[str, np.ndarray]) -> None:
    assert sorted(reference) == [p.stem for p in SAMPLES]
    stems = sorted(reference)
    batch = np.stack([
        normalize_pixels(np.asarray(Image.open(REFERENCE / f"{s}.png").convert("RGB")),
                         classifier.manifest)
        for s in stems
    ])
    assert batch.shape == (len(stems), 3, 260, 260)
    got = classifier.forward(batch)
    expected = np.array([reference[s] for s in stems])
    assert got.shape == expected.shape == (len(stems), 1000)
    assert np.abs(got - expected).max() < TOLERANCE


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_reference_pixels_are_what_decoding_the_sample_gives(
    path: Path, lite2: ModelManifest
) -> None:
    # The stored pixels are prepare_pixels' output at export time, at 260x260: if decoding
    # drifts, the logits check above no longer covers what the functions feed the model.
    pixels, *_ = prepare_pixels(path.read_bytes(), lite2)
    stored = np.asarray(Image.open(REFERENCE / f"{path.stem}.png").convert("RGB"))
    assert pixels.shape == stored.shape == (260, 260, 3)
    diff = np.abs(pixels.astype(int) - stored)
    assert diff.mean() < 0.5 and diff.max() <= 8


def test_lite2_classifies_the_sample_photos(
    classifier: Classifier, reference: dict[str, np.ndarray],
    sample_bytes: Callable[[str], bytes],
) -> None:
    """The photos' bytes through the classifier (decode, model, top-k): PyTorch's top-1, and
    its probability for every label the classifier reports."""
    results = list(classifier.classify_many((p.stem, p.read_bytes) for p in SAMPLES))
    assert [r.error for r in results] == [None] * len(SAMPLES)
    index = {label: i for i, label in enumerate(classifier.manifest.labels)}
    for result in results:
        assert result.prediction is not None
        logits = reference[result.key]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = result.prediction.top_k
        assert len(top) == 5 and index[result.prediction.label] == int(np.argmax(probs))
        np.testing.assert_allclose([t.score for t in top], [probs[index[t.label]] for t in top],
                                   atol=2e-3)
    by_photo = {r.key: r.prediction for r in results if r.prediction is not None}
    assert by_photo["coffee"].label == "espresso"
    assert by_photo["chelsea"].label in {"tabby", "tiger cat", "Egyptian cat"}
    assert (by_photo["coffee"].width, by_photo["coffee"].height) == (600, 400)
