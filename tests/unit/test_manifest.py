"""The model manifest: validation messages, round trip, and the four model shapes it must
express, each checked against a tiny ONNX model and an independent preprocessing recipe."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.classifier import Classifier, create_session
from pipeline.decode import decode_image
from pipeline.errors import ModelError
from pipeline.manifest import ModelManifest, load_manifest
from tests.tiny_models import (
    BINARY_SIGMOID,
    EFFICIENTNET_LITE0,
    KERAS_NHWC,
    RESNET_IMAGENET,
    TinyModel,
)

MakeTiny = Callable[..., TinyModel]

VALID: dict[str, Any] = {
    "name": "m",
    "version": "1",
    "file": "m.onnx",
    "sha256": "ab" * 32,
    "input_size": [224, 224],
    "labels": ["a", "b", "c"],
}


def error_for(raw: Any) -> str:
    with pytest.raises(ModelError) as info:
        ModelManifest.from_dict(raw)
    return str(info.value)


def with_(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is ...:
            del raw[key]
        else:
            raw[key] = value
    return raw


# ---- validation messages ------------------------------------------------------------------


def test_valid_minimal_manifest_gets_the_documented_defaults() -> None:
    m = ModelManifest.from_dict(VALID)
    assert (m.layout, m.activation, m.input_name, m.output_name, m.top_k) == (
        "NCHW", "softmax", "input", "logits", 5)
    assert m.model_id == "m@1"
    assert m.num_outputs == 3


@pytest.mark.parametrize("field", ["name", "version", "file", "sha256", "input_size"])
def test_missing_required_field_is_named(field: str) -> None:
    assert error_for(with_(**{field: ...})) == (
        f"model manifest: missing required field '{field}'"
    )


def test_unknown_field_is_named() -> None:
    message = error_for(with_(lables=["a"], colour="red"))
    assert message == "model manifest: unknown field(s) colour, lables"


def test_bad_layout() -> None:
    message = error_for(with_(layout="NWHC"))
    assert "'layout' is 'NWHC'" in message and "NCHW, NHWC" in message


@pytest.mark.parametrize("sha", ["abc", "g" * 64, "ab" * 33, ""])
def test_bad_sha256(sha: str) -> None:
    assert "'sha256' must be 64 hex digits" in error_for(with_(sha256=sha))


def test_upper_case_sha256_is_accepted() -> None:
    assert ModelManifest.from_dict(with_(sha256="AB" * 32)).sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"activation": "relu"}, "'activation' is 'relu'"),
        ({"input_size": [4, 4]}, "'input_size' 4x4 is outside 8..4096"),
        ({"input_size": [224]}, "'input_size' must be a number or [height, width]"),
        ({"input_size": "224"}, "'input_size' must be a number or [height, width]"),
        ({"labels": "abc"}, "'labels' must be a list of names"),
        ({"resize": ["stretch"]}, "'resize' must be an object"),
        ({"resize": {"crop_fraction": "0.875"}}, "'resize.crop_fraction' must be a number"),
        ({"resize": {"method": "resize_then_crop", "shorter_side": "256"}},
         "'resize.shorter_side' must be a number"),
        ({"resize": {"method": "zoom"}}, "'resize.method' is 'zoom'"),
        ({"resize": {"interpolation": "cubic"}}, "'resize.interpolation' is 'cubic'"),
        ({"resize": {"crop_fraction": 1.5}}, "'resize.crop_fraction' must be in 0.1..1.0"),
        ({"resize": {"method": "resize_then_crop"}}, "'resize.shorter_side' is required"),
        ({"resize": {"method": "resize_then_crop", "shorter_side": 200}}, "at least the input"),
        ({"resize": {"method": "stretch", "typo": 1}}, "typo"),
        ({"normalize": {"std": [1, 0, 1]}}, "'normalize.std' values must be positive"),
        ({"normalize": {"mean": [1, 2]}}, "'normalize.mean' must be a number or a list of 3"),
        ({"normalize": {"scale": 0}}, "'normalize.scale' must be a positive number"),
        ({"labels": []}, "no labels"),
        ({"labels": ["yes"], "activation": "sigmoid"}, "needs two labels"),
        ({"top_k": 0}, "'top_k' must be at least 1"),
        ({"name": "a@b"}, "'name' must be non-empty"),
        ({"format_version": 2}, "format_version 2 is not supported"),
        ({"labels": ...}, "give either 'labels' (a list) or 'labels_file'"),
    ],
)
def test_invalid_values_are_explained(changes: dict[str, Any], words: str) -> None:
    message = error_for(with_(**changes))
    assert message.startswith("model manifest")
    assert words in message


def test_not_json_and_not_an_object() -> None:
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelManifest.from_json("{name: m}")
    assert "expected a JSON object" in error_for(["a", "list"])


def test_missing_labels_file_and_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(with_(labels=..., labels_file="l.txt")))
    with pytest.raises(ModelError, match=r"cannot read labels file .*l\.txt"):
        load_manifest(tmp_path)
    with pytest.raises(ModelError, match="cannot read model manifest"):
        load_manifest(tmp_path / "nowhere")


def test_labels_file_is_read_and_blank_lines_skipped(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("cat\n\n dog \nespresso\n", encoding="utf-8")
    (tmp_path / "manifest.json").write_text(json.dumps(with_(labels=..., labels_file="l.txt")))
    m = load_manifest(tmp_path / "manifest.json")
    assert m.labels == ("cat", "dog", "espresso")
    assert m.directory == tmp_path


# ---- round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [VALID, EFFICIENTNET_LITE0, RESNET_IMAGENET, KERAS_NHWC, BINARY_SIGMOID],
    ids=["minimal", "efficientnet", "resnet", "keras", "binary"],
)
def test_json_round_trip(raw: dict[str, Any]) -> None:
    m = ModelManifest.from_dict(with_(**{k: v for k, v in raw.items()}))
    again = ModelManifest.from_json(m.to_json())
    assert again == m
    assert json.loads(again.to_json()) == json.loads(m.to_json())


def test_round_trip_of_the_packaged_manifest(default_manifest: ModelManifest) -> None:
    text = default_manifest.to_json()
    assert json.loads(text)["labels_file"] == "labels.txt"
    assert "labels" not in json.loads(text)  # 1000 names stay in labels.txt
    again = ModelManifest.from_json(text, directory=default_manifest.directory)
    assert again == default_manifest
    assert len(again.labels) == 1000


# ---- file checks at session creation ------------------------------------------------------


def test_sha256_mismatch_is_reported_as_corrupt(tiny_model: MakeTiny) -> None:
    model = tiny_model(EFFICIENTNET_LITE0)
    manifest = load_manifest(model.manifest_path)
    model.onnx_path.write_bytes(model.onnx_path.read_bytes() + b"\x00")
    with pytest.raises(ModelError) as info:
        create_session(manifest, intra_op_threads=1)
    message = str(info.value)
    assert "corrupt" in message and str(model.onnx_path) in message
    assert "make model" in message


def test_missing_model_file(tiny_model: MakeTiny) -> None:
    model = tiny_model(EFFICIENTNET_LITE0)
    manifest = load_manifest(model.manifest_path)
    model.onnx_path.unlink()
    with pytest.raises(ModelError, match="is missing"):
        create_session(manifest, intra_op_threads=1)


def test_label_count_must_match_the_output_width(tiny_model: MakeTiny) -> None:
    model = tiny_model(EFFICIENTNET_LITE0, outputs=7)  # 5 labels, 7 outputs
    with pytest.raises(ModelError) as info:
        create_session(load_manifest(model.manifest_path), intra_op_threads=1)
    assert "7 values per image" in str(info.value) and "5 labels" in str(info.value)


def test_binary_sigmoid_with_two_outputs_is_inconsistent(tiny_model: MakeTiny) -> None:
    model = tiny_model(BINARY_SIGMOID, outputs=2)
    with pytest.raises(ModelError, match="2 values per image"):
        create_session(load_manifest(model.manifest_path), intra_op_threads=1)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"input_name": "pixels"}, "names input 'pixels'"),
        ({"output_name": "probs"}, "names output 'probs'"),
        ({"input_size": [240, 240]}, "does not match the manifest (NCHW 240x240)"),
        ({"layout": "NHWC"}, "does not match the manifest (NHWC 224x224)"),
    ],
)
def test_manifest_must_match_the_onnx_graph(
    changes: dict[str, Any], words: str, tiny_model: MakeTiny
) -> None:
    model = tiny_model(EFFICIENTNET_LITE0)
    raw = json.loads(model.manifest_path.read_text())
    raw.update(changes)
    model.manifest_path.write_text(json.dumps(raw))
    with pytest.raises(ModelError) as info:
        create_session(load_manifest(model.manifest_path), intra_op_threads=1)
    assert words in str(info.value)


# ---- the four model shapes, end to end ----------------------------------------------------


def sample_picture() -> Image.Image:
    """A 317x211 picture with structure at every scale (gradients, stripes, noise)."""
    h, w = 211, 317
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(3)
    arr = np.stack(
        [
            255 * x / (w - 1),
            127 + 120 * np.sin(y / 9.0),
            255 * ((x // 23 + y // 17) % 2),
        ],
        axis=-1,
    )
    arr += rng.normal(0, 12, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")




_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def reference_tensor(im: Image.Image, raw: dict[str, Any]) -> np.ndarray:
    """The manifest's recipe, written out plainly with PIL and numpy (square or not)."""
    th, tw = raw["input_size"]
    resize = raw["resize"]
    interpolation = _FILTERS[resize["interpolation"]]
    w, h = im.size
    if resize["method"] == "stretch":
        out = im.resize((tw, th), interpolation)
    elif resize["method"] == "resize_then_crop":
        s = resize["shorter_side"] / min(w, h)
        rw, rh = round(w * s), round(h * s)
        big = im.resize((rw, rh), interpolation)
        left, top = (rw - tw) // 2, (rh - th) // 2
        out = big.crop((left, top, left + tw, top + th))
    else:  # crop_then_resize, square model input
        assert th == tw
        side = round(min(w, h) * resize["crop_fraction"])
        left, top = (w - side) // 2, (h - side) // 2
        out = im.crop((left, top, left + side, top + side)).resize((tw, th), interpolation)
    norm = raw["normalize"]
    x = np.asarray(out, dtype=np.float64) * norm.get("scale", 1.0)
    x = (x - np.asarray(norm.get("mean", 0.0))) / np.asarray(norm.get("std", 1.0))
    if raw["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    return x


SHAPES = [
    pytest.param(EFFICIENTNET_LITE0, (3, 224, 224), id="efficientnet-lite0"),
    pytest.param(RESNET_IMAGENET, (3, 224, 224), id="resnet-imagenet"),
    pytest.param(KERAS_NHWC, (150, 150, 3), id="keras-nhwc"),
    pytest.param(BINARY_SIGMOID, (3, 200, 200), id="binary-sigmoid"),
]


@pytest.mark.parametrize(("raw", "shape"), SHAPES)
def test_decode_matches_an_independent_recipe(
    raw: dict[str, Any], shape: tuple[int, ...], tiny_model: MakeTiny
) -> None:
    manifest = load_manifest(tiny_model(raw).manifest_path)
    picture = sample_picture()
    buf = io.BytesIO()
    picture.save(buf, "PNG")

    decoded = decode_image(buf.getvalue(), manifest)

    expected = reference_tensor(picture, raw)
    assert decoded.tensor.shape == shape == expected.shape
    assert decoded.tensor.dtype == np.float32
    assert (decoded.width, decoded.height, decoded.format) == (317, 211, "PNG")
    np.testing.assert_allclose(decoded.tensor, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("raw", "shape"), SHAPES)
def test_classifier_runs_each_shape_end_to_end(
    raw: dict[str, Any], shape: tuple[int, ...], tiny_model: MakeTiny
) -> None:
    model = tiny_model(raw)
    manifest = load_manifest(model.manifest_path)
    picture = sample_picture()
    buf = io.BytesIO()
    picture.save(buf, "PNG")

    with Classifier(manifest, batch_size=4, decode_workers=1, intra_op_threads=1) as clf:
        prediction = clf.classify_bytes(buf.getvalue())

    logits = model.expected_logits(reference_tensor(picture, raw))
    scores = {t.label: t.score for t in prediction.top_k}
    assert set(scores) == set(raw["labels"])  # every label (top_k 5 >= label count)
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-9)
    if raw["activation"] == "softmax":
        e = np.exp(logits - logits.max())
        expected = dict(zip(raw["labels"], e / e.sum(), strict=True))
    else:
        (logit,) = logits
        p = 1 / (1 + np.exp(-logit))
        expected = {"negative": 1 - p, "positive": p}
    assert scores == pytest.approx(expected, abs=1e-5)
    assert prediction.label == max(expected, key=expected.__getitem__)
    assert prediction.score == max(scores.values())
    assert [t.score for t in prediction.top_k] == sorted(scores.values(), reverse=True)
    assert [t.index for t in prediction.top_k] == [
        raw["labels"].index(t.label) for t in prediction.top_k
    ]
