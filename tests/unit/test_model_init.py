"""`imgpipe model init`: the manifest from the ONNX graph and a preset, and each refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from imgpipe.cli import main
from imgpipe.modelcheck import check_model, default_photos
from pipeline.classifier import Classifier
from pipeline.manifest import load_manifest
from tests.tiny_models import build_onnx

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "model"


def _labels(folder: Path, n: int, name: str = "labels.txt") -> Path:
    path = folder / name
    path.write_text("".join(f"class{i}\n" for i in range(n)), encoding="utf-8")
    return path


def _tiny(tmp_path: Path, *, layout: str = "NCHW", size: int = 64, outputs: int = 4,
          **kwargs: Any) -> Path:
    path = tmp_path / "tiny.onnx"
    build_onnx(path, layout=layout, height=size, width=size, outputs=outputs, **kwargs)
    return path


def _init(*argv: str) -> int:
    return main(["model", "init", *argv])


def test_the_real_lite0_round_trip_gives_the_packaged_manifest_and_the_same_predictions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """init on the packaged EfficientNet-Lite0 file writes model/manifest.json again (byte for
    byte), and check classifies the sample photos exactly as the packaged model does."""
    folder = tmp_path / "lite0"
    folder.mkdir()
    shutil.copy(MODEL_DIR / "efficientnet_lite0.onnx", folder)
    assert _init(str(folder / "efficientnet_lite0.onnx"), "--labels",
                 str(MODEL_DIR / "labels.txt"), "--preset", "efficientnet",
                 "--name", "efficientnet-lite0") == 0
    assert "activation softmax" in capsys.readouterr().out
    written, packaged = load_manifest(folder), load_manifest(MODEL_DIR)
    assert written.to_dict() == packaged.to_dict()
    assert (folder / "manifest.json").read_bytes() == (MODEL_DIR / "manifest.json").read_bytes()
    assert (folder / "labels.txt").read_bytes() == (MODEL_DIR / "labels.txt").read_bytes()

    photos = default_photos()
    assert len(photos) == 6
    report = check_model(str(folder), photos)
    assert report.usable and not report.warnings, report
    with Classifier(packaged) as clf:
        expected = [clf.classify_bytes(p.read_bytes()) for p in photos]
    for got, want in zip(report.photos, expected, strict=True):
        assert [(t.label, round(t.score, 6)) for t in got.top] == \
            [(t.label, round(t.score, 6)) for t in want.top_k[:3]]
    assert next(p for p in report.photos if p.name == "coffee.jpg").top[0].label == "espresso"


def test_keras_nhwc_model_reads_layout_and_size_from_the_graph(tmp_path: Path) -> None:
    onnx_path = _tiny(tmp_path, layout="NHWC", size=150, outputs=3,
                      input_name="input_1", output_name="dense")
    labels = _labels(tmp_path, 3)
    assert _init(str(onnx_path), "--labels", str(labels), "--preset", "keras",
                 "--keras-mode", "unit", "--name", "pets", "--version", "2") == 0
    m = load_manifest(tmp_path)
    assert (m.layout, m.input_size, m.input_name, m.output_name) == \
        ("NHWC", (150, 150), "input_1", "dense")
    assert (m.resize.method, m.resize.interpolation) == ("stretch", "bilinear")
    assert m.normalize.scale == pytest.approx(1 / 255) and m.normalize.mean == (0, 0, 0)
    assert m.activation == "softmax" and m.model_id == "pets@2"
    assert check_model(str(tmp_path), default_photos()).usable


@pytest.mark.parametrize(("mode", "scale", "mean", "std"), [
    ("tf", 1.0, (127.5,) * 3, (127.5,) * 3),  # x / 127.5 - 1
    ("torch", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("raw", 1.0, (0.0,) * 3, (1.0,) * 3),
])
def test_keras_modes_are_preprocess_input_s(tmp_path: Path, mode: str, scale: float,
                                            mean: tuple[float, ...],
                                            std: tuple[float, ...]) -> None:
    onnx_path = _tiny(tmp_path, layout="NHWC")
    assert _init(str(onnx_path), "--labels", str(_labels(tmp_path, 4)), "--preset", "keras",
                 "--keras-mode", mode) == 0
    n = load_manifest(tmp_path).normalize
    assert (n.scale, n.mean, n.std) == (pytest.approx(scale), mean, std)


def test_torchvision_preset_with_a_dynamic_size_asks_for_input_size(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = _tiny(tmp_path, input_shape=["batch", 3, "height", "width"])
    labels = _labels(tmp_path, 4)
    assert _init(str(onnx_path), "--labels", str(labels), "--preset", "torchvision") == 1
    err = capsys.readouterr().err
    assert "no fixed height and width: give --input-size" in err
    assert not (tmp_path / "manifest.json").exists()
    assert _init(str(onnx_path), "--labels", str(labels), "--preset", "torchvision",
                 "--input-size", "224") == 0
    m = load_manifest(tmp_path)
    assert m.input_size == (224, 224) and m.layout == "NCHW" and m.name == "tiny"
    assert (m.resize.method, m.resize.shorter_side, m.resize.interpolation) == \
        ("resize_then_crop", 256, "bilinear")
    assert m.normalize.mean == (0.485, 0.456, 0.406) and m.normalize.std == (0.229, 0.224, 0.225)


def test_efficientnet_preset_crops_size_over_size_plus_32(tmp_path: Path) -> None:
    """EfficientNet's evaluation crop at another size (Lite2 is 260): 260 / 292."""
    onnx_path = _tiny(tmp_path, size=260)
    assert _init(str(onnx_path), "--labels", str(_labels(tmp_path, 4)), "--preset",
                 "efficientnet") == 0
    assert load_manifest(tmp_path).resize.crop_fraction == pytest.approx(260 / 292)


def test_activation_follows_the_scores(tmp_path: Path) -> None:
    """A graph ending in Softmax already gives probabilities: activation none; one output with
    two labels: sigmoid."""
    soft = tmp_path / "soft"
    soft.mkdir()
    onnx_path = _tiny(soft, last_op="Softmax")
    assert _init(str(onnx_path), "--labels", str(_labels(soft, 4)), "--preset",
                 "torchvision") == 0
    assert load_manifest(soft).activation == "none"
    binary = tmp_path / "binary"
    binary.mkdir()
    onnx_path = _tiny(binary, outputs=1)
    assert _init(str(onnx_path), "--labels", str(_labels(binary, 2)), "--preset",
                 "torchvision") == 0
    m = load_manifest(binary)
    assert m.activation == "sigmoid" and m.num_outputs == 1


def test_labels_elsewhere_are_copied_beside_the_model(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    onnx_path = _tiny(tmp_path / "m")
    labels = _labels(tmp_path, 4, "classes.txt")
    assert _init(str(onnx_path), "--labels", str(labels), "--preset", "torchvision") == 0
    assert (tmp_path / "m" / "classes.txt").read_text() == labels.read_text()
    assert load_manifest(tmp_path / "m").labels_file == "classes.txt"


REFUSALS: list[tuple[str, dict[str, Any], list[str], int, str]] = [
    ("fixed batch", {"input_shape": [1, 3, 64, 64]}, [], 4,
     "batch dimension is fixed at 1"),
    ("channels unknown", {"input_shape": ["n", "c", "h", "w"]}, ["--input-size", "64"], 4,
     "give --layout NCHW"),
    ("labels short", {}, [], 3, "has 4 values per photo but the labels file has 3 labels"),
    ("background class", {"outputs": 5}, [], 4, "background class first"),
    ("two outputs", {"extra_output": "features", "outputs": 3}, [], 4, "give --output NAME"),
    ("layout contradicted", {}, ["--layout", "NHWC"], 4, "--layout NHWC, but the graph"),
    ("size contradicted", {}, ["--input-size", "224"], 4, "--input-size 224x224, but"),
    ("bad size", {}, ["--input-size", "big"], 4, "--input-size 'big'"),
    ("keras mode missing", {}, ["--preset", "keras"], 4, "give --keras-mode"),
    ("caffe", {}, ["--preset", "keras", "--keras-mode", "caffe"], 4, "BGR"),
    ("keras mode elsewhere", {}, ["--keras-mode", "tf"], 4, "--keras-mode is for --preset keras"),
    ("bad name", {}, ["--name", "my model"], 4, "--name 'my model'"),
    ("one output, four labels", {"outputs": 1}, [], 4, "give --labels a file with two labels"),
    ("binary softmax", {"outputs": 1}, ["--activation", "softmax"], 2,
     "leave --activation out"),
]


@pytest.mark.parametrize(("graph", "flags", "labels", "sentence"),
                         [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_what_cannot_be_inferred_is_refused_naming_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], graph: dict[str, Any],
        flags: list[str], labels: int, sentence: str) -> None:
    onnx_path = _tiny(tmp_path, **graph)
    argv = [str(onnx_path), "--labels", str(_labels(tmp_path, labels)), *flags]
    if "--preset" not in flags:
        argv += ["--preset", "torchvision"]
    assert _init(*argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("imgpipe model init: ") and sentence in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "manifest.json").exists()


def test_an_existing_manifest_is_kept_without_force(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = _tiny(tmp_path)
    labels = _labels(tmp_path, 4)
    (tmp_path / "manifest.json").write_text("{}")
    assert _init(str(onnx_path), "--labels", str(labels), "--preset", "torchvision") == 1
    assert "give --force" in capsys.readouterr().err
    assert (tmp_path / "manifest.json").read_text() == "{}"
    assert _init(str(onnx_path), "--labels", str(labels), "--preset", "torchvision",
                 "--force") == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["name"] == "tiny"


def test_missing_files_are_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _init(str(tmp_path / "nope.onnx"), "--labels", "x", "--preset", "keras") == 2
    assert "is not a file" in capsys.readouterr().err
    onnx_path = _tiny(tmp_path)
    assert _init(str(onnx_path), "--labels", str(tmp_path / "none.txt"), "--preset",
                 "keras") == 1
    assert "cannot read the labels file" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert _init(str(tmp_path / "bad.onnx"), "--labels", str(_labels(tmp_path, 4)),
                 "--preset", "keras") == 1
    assert "ONNX Runtime cannot load" in capsys.readouterr().err


@pytest.mark.parametrize(("shape", "dtype", "sentence"), [
    (("n", 1, 64, 64), "tensor(float)", "3 channels"),
    (("n", 3, 64, 64), "tensor(uint8)", "imgpipe feeds float32"),
    (("n", 3, 64), "tensor(float)", "a batch of images"),
])
def test_inputs_imgpipe_cannot_feed_are_refused(tmp_path: Path, shape: tuple[Any, ...],
                                                 dtype: str, sentence: str) -> None:
    """Graphs ONNX Runtime loads but imgpipe cannot feed (described, not built: the tiny
    model needs three float channels)."""
    from imgpipe.modelinit import GraphInfo, InitError, build_manifest

    graph = GraphInfo("input", shape, dtype, (("logits", ("n", 4)),))
    onnx_path = _tiny(tmp_path)
    with pytest.raises(InitError, match=sentence):
        build_manifest(graph, onnx_path=onnx_path, labels=["a", "b", "c", "d"],
                       labels_file="labels.txt", preset="torchvision", name="m", version="1")


def test_init_on_lite2_writes_the_manifest_its_export_wrote(tmp_path: Path) -> None:
    """The exported Lite2 (260 px, crop 260/292) goes through `model init` to the same
    manifest model/export.py wrote for it: the preset and the export agree off 224 too."""
    lite2 = MODEL_DIR / "efficientnet-lite2"
    folder = tmp_path / "lite2"
    folder.mkdir()
    shutil.copy(lite2 / "efficientnet_lite2.onnx", folder)
    assert _init(str(folder / "efficientnet_lite2.onnx"), "--labels",
                 str(lite2 / "labels.txt"), "--preset", "efficientnet",
                 "--name", "efficientnet-lite2") == 0
    assert load_manifest(folder).to_dict() == load_manifest(lite2).to_dict()
    assert (folder / "manifest.json").read_bytes() == (lite2 / "manifest.json").read_bytes()
