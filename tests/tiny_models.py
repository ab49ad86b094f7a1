"""Tiny ONNX classifiers for tests, built with `onnx.helper` in milliseconds.

Every model is linear in the per-channel means of its input, so a test can compute the
exact expected logits from a tensor with numpy (`TinyModel.expected_logits`) and compare
them with what the pipeline returns:

    NCHW: input -> GlobalAveragePool -> Flatten -> MatMul(W) -> Add(b) -> output
    NHWC: input -> Transpose(0,3,1,2) -> the same

The weights are fixed small numbers, different per output, so softmax scores are not all
equal and top-k order means something.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# ONNX Runtime accepts older IR versions forever; pinning keeps a newer `onnx` package
# from writing an IR version the installed runtime does not know yet.
IR_VERSION = 8
OPSET = 17


@dataclass(frozen=True)
class TinyModel:
    directory: Path
    manifest_path: Path
    onnx_path: Path
    weights: np.ndarray  # (3, outputs)
    bias: np.ndarray  # (outputs,)
    layout: str

    def expected_logits(self, tensor: np.ndarray) -> np.ndarray:
        """Logits for one image tensor (no batch axis) in the model's layout, in float64."""
        axes = (1, 2) if self.layout == "NCHW" else (0, 1)
        means = np.asarray(tensor, dtype=np.float64).mean(axis=axes)
        return means @ self.weights.astype(np.float64) + self.bias.astype(np.float64)


def weights_for(outputs: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.array(
        [[0.9 - 0.35 * j, -0.4 + 0.3 * j, 0.25 * ((-1) ** j)] for j in range(outputs)],
        dtype=np.float32,
    ).T  # (3, outputs)
    b = np.array([0.1 * j - 0.05 for j in range(outputs)], dtype=np.float32)
    return w, b


def build_onnx(
    path: Path,
    *,
    layout: str,
    height: int,
    width: int,
    outputs: int,
    input_name: str = "input",
    output_name: str = "logits",
    input_shape: list[Any] | None = None,
    last_op: str | None = None,
    extra_output: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Write the tiny model to `path`; return its (weights, bias).

    `input_shape` replaces the declared input shape (a fixed batch, named sizes);
    `last_op` ends the graph in "Softmax" or "Sigmoid" (probabilities out), or "NaN"
    (every output NaN); `extra_output` names a second output (the pooled features).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = weights_for(outputs)
    shape: list[Any] = input_shape or (
        ["batch", 3, height, width] if layout == "NCHW" else ["batch", height, width, 3]
    )
    nodes = []
    first = input_name
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [input_name], ["nchw"], perm=[0, 3, 1, 2]))
        first = "nchw"
    summed = output_name if last_op is None else "summed"
    nodes += [
        helper.make_node("GlobalAveragePool", [first], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["scores"]),
        helper.make_node("Add", ["scores", "B"], [summed]),
    ]
    initializers = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    if last_op == "NaN":  # (x / 0) * 0
        initializers.append(numpy_helper.from_array(np.zeros((1,), np.float32), "Z"))
        nodes += [helper.make_node("Div", [summed, "Z"], ["inf"]),
                  helper.make_node("Mul", ["inf", "Z"], [output_name])]
    elif last_op is not None:
        nodes.append(helper.make_node(last_op, [summed], [output_name]))
    graph_outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                                   ["batch", outputs])]
    if extra_output:
        nodes.append(helper.make_node("Identity", ["flat"], [extra_output]))
        graph_outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT,
                                                           ["batch", 3]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        graph_outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return w, b


def make_tiny_model(
    directory: Path,
    manifest_fields: dict[str, Any],
    *,
    outputs: int | None = None,
    file: str = "tiny.onnx",
) -> TinyModel:
    """Build the ONNX file and a matching `manifest.json` in `directory`.

    `manifest_fields` is the manifest without `file`/`sha256` (filled in here). `outputs`
    defaults to the width the manifest implies (1 for a binary sigmoid, else the label
    count); pass another number to build an inconsistent model on purpose.
    """
    directory.mkdir(parents=True, exist_ok=True)
    raw = dict(manifest_fields)
    size = raw["input_size"]
    height, width = (size, size) if isinstance(size, int) else size
    labels = raw["labels"]
    if outputs is None:
        binary = raw.get("activation") == "sigmoid" and len(labels) == 2
        outputs = 1 if binary else len(labels)
    layout = raw.get("layout", "NCHW")
    onnx_path = directory / file
    w, b = build_onnx(
        onnx_path,
        layout=layout,
        height=height,
        width=width,
        outputs=outputs,
        input_name=raw.get("input_name", "input"),
        output_name=raw.get("output_name", "logits"),
    )
    raw["file"] = file
    raw["sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    manifest_path = directory / "manifest.json"
    manifest_path.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return TinyModel(directory, manifest_path, onnx_path, w, b, layout)


# ---- the four model shapes the manifest must express ---------------------------------

EFFICIENTNET_LITE0: dict[str, Any] = {
    "name": "tiny-efficientnet",
    "version": "1",
    "input_size": [224, 224],
    "layout": "NCHW",
    "resize": {"method": "crop_then_resize", "interpolation": "bicubic", "crop_fraction": 0.875},
    "normalize": {"scale": 1.0, "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]},
    "activation": "softmax",
    "labels": ["cat", "dog", "espresso", "rocket", "galaxy"],
}

RESNET_IMAGENET: dict[str, Any] = {
    "name": "tiny-resnet",
    "version": "18",
    "input_size": [224, 224],
    "input_name": "data",
    "output_name": "output",
    "layout": "NCHW",
    "resize": {"method": "resize_then_crop", "interpolation": "bilinear", "shorter_side": 256},
    "normalize": {
        "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "activation": "softmax",
    "labels": ["tench", "goldfish", "great white shark", "tiger shark"],
}

KERAS_NHWC: dict[str, Any] = {
    "name": "tiny-keras",
    "version": "2",
    "input_size": [150, 150],
    "input_name": "input_1",
    "output_name": "dense",
    "layout": "NHWC",
    "resize": {"method": "stretch", "interpolation": "bilinear"},
    "normalize": {"scale": 1 / 255},
    "activation": "softmax",
    "labels": ["cats", "dogs", "horses"],
}

BINARY_SIGMOID: dict[str, Any] = {
    "name": "tiny-binary",
    "version": "3",
    "input_size": [200, 200],
    "layout": "NCHW",
    "resize": {"method": "crop_then_resize", "interpolation": "bilinear", "crop_fraction": 1.0},
    "normalize": {"scale": 1 / 255},
    "activation": "sigmoid",
    "labels": ["negative", "positive"],
}
