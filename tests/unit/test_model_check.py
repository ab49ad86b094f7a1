"""`imgpipe model check`: the folder loaded as the functions load it, photos through the
classifier's stages, and the warnings and errors that catch a wrong manifest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgpipe.cli import main
from imgpipe.modelcheck import check_model, default_photos
from tests.tiny_models import KERAS_NHWC, RESNET_IMAGENET, TinyModel, build_onnx

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _check(*argv: str) -> int:
    return main(["model", "check", *argv])


def _edit(model: TinyModel, **changes: Any) -> None:
    raw = json.loads(model.manifest_path.read_text())
    raw.update(changes)
    model.manifest_path.write_text(json.dumps(raw))


def _rebuild(model: TinyModel, **graph: Any) -> None:
    """Replace the model's ONNX file (same size and outputs) and its manifest's sha256."""
    import hashlib

    raw = json.loads(model.manifest_path.read_text())
    h, w = raw["input_size"]
    build_onnx(model.onnx_path, layout=raw.get("layout", "NCHW"), height=h, width=w,
               outputs=len(raw["labels"]), input_name=raw.get("input_name", "input"),
               output_name=raw.get("output_name", "logits"), **graph)
    _edit(model, sha256=hashlib.sha256(model.onnx_path.read_bytes()).hexdigest())


def test_a_good_model_prints_top_3_speed_and_memory(
        tiny_model: Callable[..., TinyModel], capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model(KERAS_NHWC)
    assert _check(str(model.directory)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("model tiny-keras@2 from ")
    assert "NHWC 150x150, stretch, softmax, 3 labels" in out[0]
    rows = [line for line in out if line.startswith("  ")]
    assert [r.split()[0] for r in rows] == [p.name for p in default_photos()]
    assert all(len(r.split()) == 1 + 2 * 3 for r in rows)  # name, then 3 x (label, score)
    assert any(line.startswith("speed: ") and "ms per image at batch 16" in line for line in out)
    assert any(line.startswith("memory: the session takes ") for line in out)
    assert out[-1] == "usable"


def test_given_photos_and_folders_replace_the_samples(
        tiny_model: Callable[..., TinyModel], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    model = tiny_model(RESNET_IMAGENET)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes())
    (tmp_path / "notes.txt").write_text("not a photo")
    assert _check(str(model.directory), str(tmp_path / "photos"),
                  str(tmp_path / "notes.txt")) == 0
    out = capsys.readouterr().out
    assert "  a.jpg  " in out and "notes.txt  rejected: " in out


def test_a_layout_the_graph_contradicts_is_an_error_that_says_which(
        tiny_model: Callable[..., TinyModel], capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model(RESNET_IMAGENET)  # an NCHW graph
    _edit(model, layout="NHWC")
    assert _check(str(model.directory)) == 1
    out = capsys.readouterr().out
    assert "layout: the manifest says NHWC but the graph's input" in out
    assert 'set "layout": "NCHW"' in out and out.rstrip().endswith("not usable")


def test_labels_that_do_not_fit_the_output_are_an_error(
        tiny_model: Callable[..., TinyModel], capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model(RESNET_IMAGENET, outputs=5)  # 4 labels
    assert _check(str(model.directory)) == 1
    assert "the output has 5 values per image but the manifest has 4 labels" in \
        capsys.readouterr().out


def test_a_corrupt_file_is_the_functions_own_sentence(
        tiny_model: Callable[..., TinyModel], capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model(RESNET_IMAGENET)
    model.onnx_path.write_bytes(model.onnx_path.read_bytes() + b"x")
    assert _check(str(model.directory)) == 1
    assert "is corrupt or not the one the manifest describes" in capsys.readouterr().out


def test_nan_outputs_are_an_error(tiny_model: Callable[..., TinyModel]) -> None:
    model = tiny_model(RESNET_IMAGENET)
    _rebuild(model, last_op="NaN")
    report = check_model(str(model.directory), default_photos())
    assert not report.usable
    assert any("NaN or infinity for astronaut.jpg" in e for e in report.errors), report.errors


def test_softmax_on_probabilities_is_a_warning(tiny_model: Callable[..., TinyModel]) -> None:
    model = tiny_model(RESNET_IMAGENET)
    _rebuild(model, last_op="Softmax")
    report = check_model(str(model.directory), default_photos())
    assert report.usable
    assert any('already are probabilities' in w and '"activation": "none"' in w
               for w in report.warnings), report.warnings


def test_none_on_logits_and_sigmoid_on_probabilities_are_warnings(
        tiny_model: Callable[..., TinyModel]) -> None:
    model = tiny_model(RESNET_IMAGENET)
    _edit(model, activation="none", normalize={"scale": 1.0})  # logits well outside 0..1
    report = check_model(str(model.directory), default_photos())
    assert any("not between 0 and 1" in w for w in report.warnings), report.warnings
    sig = tiny_model(RESNET_IMAGENET, name="sig")
    _rebuild(sig, last_op="Sigmoid")
    _edit(sig, activation="sigmoid")
    report = check_model(str(sig.directory), default_photos())
    assert any("already between 0 and 1" in w for w in report.warnings), report.warnings


def test_every_photo_the_same_label_is_a_warning(tiny_model: Callable[..., TinyModel]) -> None:
    """A normalisation that crushes every pixel to ~0 leaves the bias alone to decide."""
    model = tiny_model(RESNET_IMAGENET)
    _edit(model, normalize={"scale": 1e-9})
    report = check_model(str(model.directory), default_photos())
    assert report.usable
    assert any(w.startswith("every photo got the label 'tiger shark'") for w in report.warnings)


def test_a_fixed_batch_of_one_is_an_error_that_says_so(
        tiny_model: Callable[..., TinyModel]) -> None:
    model = tiny_model(RESNET_IMAGENET)
    _rebuild(model, input_shape=[1, 3, 224, 224])
    report = check_model(str(model.directory), default_photos())
    assert not report.usable
    assert any("batch dimension is fixed at 1" in e for e in report.errors), report.errors


def test_a_missing_folder_and_no_photos(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(str(tmp_path / "none")) == 1
    assert "does not exist" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _check("efficientnet-lite0", str(empty)) == 2
    assert "no photos to try" in capsys.readouterr().err
