"""The packaged int8 EfficientNet-Lite0: found by name, verified, quantized, and agreeing with
fp32 on the sample photos (ONNX Runtime end to end). Its fidelity on the 500+ held-out
photo crops is measured by `make model-check` (model/quantize.py --check)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from pipeline.classifier import Classifier, Prediction
from pipeline.errors import ModelError
from pipeline.manifest import ModelManifest
from pipeline.modelstore import model_id_of, packaged_models, resolve_model

ROOT = Path(__file__).resolve().parents[2]
INT8 = "efficientnet-lite0-int8"
INT8_DIR = ROOT / "model" / INT8
SAMPLES = sorted((ROOT / "samples").glob("*.jpg"))


@pytest.fixture(scope="module")
def int8() -> ModelManifest:
    return resolve_model(INT8)


def classify_samples(manifest: ModelManifest) -> list[Prediction]:
    with Classifier(manifest, batch_size=8) as clf:
        results = list(clf.classify_many((p, p.read_bytes) for p in SAMPLES))
    assert [r.error for r in results] == [None] * len(SAMPLES)
    return [r.prediction for r in results if r.prediction is not None]


@pytest.fixture(scope="module")
def predictions(int8: ModelManifest) -> Iterator[tuple[list[Prediction], list[Prediction]]]:
    yield classify_samples(resolve_model("")), classify_samples(int8)


def test_packaged_models_are_found_by_name(int8: ModelManifest) -> None:
    models = packaged_models()
    assert list(models)[:1] == ["efficientnet-lite0"]  # the default comes first
    assert models[INT8] == INT8_DIR
    assert model_id_of(INT8) == "efficientnet-lite0-int8@1"
    assert model_id_of("efficientnet-lite0") == model_id_of("") == "efficientnet-lite0@1"
    assert resolve_model("efficientnet-lite0") == resolve_model("")
    assert int8.model_id == "efficientnet-lite0-int8@1"


def test_an_unknown_name_lists_the_packaged_models() -> None:
    with pytest.raises(ModelError, match="efficientnet-lite0, efficientnet-lite0-int8"):
        resolve_model("efficientnet-lite9")


def test_manifest_sha256_matches_the_committed_file(int8: ModelManifest) -> None:
    digest = hashlib.sha256((INT8_DIR / "efficientnet_lite0_int8.onnx").read_bytes())
    assert int8.sha256 == digest.hexdigest()


def test_int8_reads_photos_exactly_as_fp32_does(int8: ModelManifest) -> None:
    fp32 = resolve_model("")
    same = ("input_size", "input_name", "output_name", "layout", "resize", "normalize",
            "activation", "labels", "top_k")
    assert {f: getattr(int8, f) for f in same} == {f: getattr(fp32, f) for f in same}
    assert int8.onnx_path.stat().st_size < 0.6 * fp32.onnx_path.stat().st_size


def test_the_file_is_statically_quantized(int8: ModelManifest) -> None:
    graph = onnx.load(str(int8.onnx_path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 40 and ops.count("DequantizeLinear") >= 40
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 40  # the convolution weights, per channel


def test_int8_agrees_with_fp32_on_the_sample_photos(
    predictions: tuple[list[Prediction], list[Prediction]],
) -> None:
    # Same top-1 wherever fp32 has a clear winner (ahead of its runner-up by 0.1 or more:
    # coffee, motorcycle, rocket); near-ties (chelsea: tiger cat 0.385 vs Egyptian cat
    # 0.348) may flip, as they do between any two builds of a model. fp32's top-1 is always
    # among int8's top 5, and no score moves by more than 0.1.
    fp32, int8 = predictions
    clear = 0
    for sample, f, q in zip(SAMPLES, fp32, int8, strict=True):
        if f.top_k[0].score - f.top_k[1].score >= 0.1:
            clear += 1
            assert q.label == f.label, sample.name
        assert f.label in [t.label for t in q.top_k], sample.name
        assert (q.width, q.height) == (f.width, f.height)
        int8_scores = {t.label: t.score for t in q.top_k}
        assert abs(int8_scores[f.label] - f.score) < 0.1, sample.name
    assert clear >= 3  # the first check is not vacuous


def test_calibration_and_held_out_photos_never_share_a_source() -> None:
    record = json.loads((INT8_DIR / "photos.json").read_text("utf-8"))
    roles = {p["source"]: p["role"] for p in record["photos"]}
    assert len(roles) == len(record["photos"])  # one role per source photo
    held = [s for s, r in roles.items() if r == "held-out"]
    calib = [s for s, r in roles.items() if r == "calibration"]
    assert calib and set(held).isdisjoint(calib)
    assert len(held) * len(record["crops"]) >= 500
    for sample in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"):
        assert any(s.endswith("/" + sample) for s in held), sample
