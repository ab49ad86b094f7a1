"""A real network in Keras' channels-last layout: EfficientNet-Lite0's NHWC twin, made from
the committed model by `model/export.py --nhwc` (a Transpose in front of the same graph),
read through its manifest as the functions read a model, agrees with its NCHW original on
every sample photo, with the model's own resize and with Keras' `stretch`."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

from pipeline.classifier import Classifier, Prediction
from pipeline.decode import normalize_pixels, prepare_pixels
from pipeline.errors import ModelError
from pipeline.manifest import ModelManifest, Resize
from pipeline.modelstore import default_model_dir, resolve_model

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").glob("*.jpg"))
# Keras' recipe: the whole photo stretched to the input size, bilinear.
RESIZES = {"crop_then_resize": None, "stretch": Resize(method="stretch", interpolation="bilinear")}


def load_export_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("model_export", ROOT / "model" / "export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nhwc")
    load_export_script().nhwc_twin(default_model_dir(), out)
    return out


def folder(base: Path, manifest: ModelManifest, resize: Resize | None) -> Path:
    """A model folder: the manifest with `resize` (if given) beside links to its files."""
    if resize is None:
        return base
    out = base.parent / f"{base.name}-{resize.method}"
    if not out.exists():
        out.mkdir()
        for name in (manifest.file, manifest.labels_file):
            assert name
            os.symlink(base / name, out / name)
        changed = dataclasses.replace(manifest, resize=resize)
        (out / "manifest.json").write_text(changed.to_json(), encoding="utf-8")
    return out


@pytest.fixture(scope="module", params=sorted(RESIZES))
def pair(request: pytest.FixtureRequest, twin_dir: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Classifier, Classifier]]:
    resize = RESIZES[request.param]
    nchw_base = tmp_path_factory.mktemp("nchw") / "lite0"
    nchw_base.mkdir()
    original = resolve_model("")
    for name in (original.file, original.labels_file, "manifest.json"):
        assert name
        os.symlink(default_model_dir() / name, nchw_base / name)
    nchw = resolve_model(str(folder(nchw_base, original, resize)))
    nhwc = resolve_model(str(folder(twin_dir, resolve_model(str(twin_dir)), resize)))
    assert nchw.resize == nhwc.resize == (resize or original.resize)
    with Classifier(nchw, batch_size=8) as a, Classifier(nhwc, batch_size=8) as b:
        yield a, b


def test_the_twin_takes_channels_last_input(twin_dir: Path) -> None:
    twin = resolve_model(str(twin_dir))
    original = resolve_model("")
    assert twin.layout == "NHWC" and original.layout == "NCHW"
    assert twin.model_id == "efficientnet-lite0-nhwc@1"
    assert dataclasses.replace(twin, name=original.name, file=original.file,
                               sha256=original.sha256, layout="NCHW") == original
    graph = onnx.load(str(twin.onnx_path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert (graph.input[0].name, dims) == ("input", ["batch", 224, 224, 3])
    first = graph.node[0]
    assert first.op_type == "Transpose" and list(first.attribute[0].ints) == [0, 3, 1, 2]


def test_the_twin_refuses_a_manifest_that_says_nchw(twin_dir: Path) -> None:
    wrong = dataclasses.replace(resolve_model(str(twin_dir)), layout="NCHW")
    with pytest.raises(ModelError, match="does not match the manifest"):
        Classifier(wrong).session  # noqa: B018  # the session is opened and checked here


def test_the_twin_agrees_with_its_nchw_original(pair: tuple[Classifier, Classifier]) -> None:
    nchw, nhwc = pair
    datas = [p.read_bytes() for p in SAMPLES]
    tensors = {}
    for clf in pair:
        pixels = [prepare_pixels(d, clf.manifest)[0] for d in datas]
        tensors[clf.manifest.layout] = np.stack([normalize_pixels(p, clf.manifest)
                                                 for p in pixels])
    assert tensors["NCHW"].shape == (len(SAMPLES), 3, 224, 224)
    assert tensors["NHWC"].shape == (len(SAMPLES), 224, 224, 3)
    np.testing.assert_array_equal(tensors["NCHW"].transpose(0, 2, 3, 1), tensors["NHWC"])
    logits_nchw, logits_nhwc = nchw.forward(tensors["NCHW"]), nhwc.forward(tensors["NHWC"])
    assert logits_nchw.shape == logits_nhwc.shape == (len(SAMPLES), 1000)
    assert np.abs(logits_nchw - logits_nhwc).max() < 1e-5
    predictions: list[list[Prediction]] = []
    for clf in pair:
        results = list(clf.classify_many((p.name, p.read_bytes) for p in SAMPLES))
        assert [r.error for r in results] == [None] * len(SAMPLES)
        predictions.append([r.prediction for r in results if r.prediction is not None])
    for a, b in zip(*predictions, strict=True):
        assert a.label == b.label  # top-1 on every sample photo
        assert [t.label for t in a.top_k] == [t.label for t in b.top_k]
        np.testing.assert_allclose([t.score for t in a.top_k], [t.score for t in b.top_k],
                                   atol=1e-5)
