"""`imgpipe model init`: write the manifest of an ONNX classifier from its graph and a preset.

What the graph says (input and output names, size, layout) is read from ONNX Runtime's
session metadata; what it cannot say (how photos were resized and normalised in training)
comes from the preset of the framework the model was trained with:

- `efficientnet`: the EfficientNet(-Lite) evaluation recipe: centre crop of
  size / (size + 32) of the short side (0.875 at 224), bicubic, (x - 127) / 128, as
  `model/export.py` exports the packaged Lite0;
- `torchvision`: torchvision's ImageNet weights' transforms: resize the short side to
  256 (for 224; the same 224:256 ratio for other sizes), bilinear, centre crop, x / 255,
  then ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225);
- `keras`: the whole photo stretched to the input size (bilinear, as Keras'
  `image_dataset_from_directory` does), and one of `keras.applications`' preprocess_input
  modes, which differ between model families (`KERAS_MODES`).

Anything neither the graph nor the flags settle is refused with a sentence naming the flag.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.errors import ImgpipeError
from pipeline.manifest import ModelManifest, Normalize, Resize, sha256_file

__all__ = ["KERAS_MODES", "PRESETS", "GraphInfo", "InitError", "build_manifest", "read_graph",
           "read_labels", "write_model_folder"]

PRESETS = ("efficientnet", "torchvision", "keras")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_CROP_PADDING = 32  # crop = size / (size + 32) of the short side
TORCHVISION_RESIZE_RATIO = 256 / 224

# keras.applications' preprocess_input, by mode: (what it computes, the families using it).
KERAS_MODES: dict[str, tuple[Normalize, str]] = {
    "tf": (Normalize(scale=1.0, mean=(127.5,) * 3, std=(127.5,) * 3),
           "x / 127.5 - 1: MobileNet, MobileNetV2, InceptionV3, InceptionResNetV2, Xception, "
           "ResNet50V2/101V2/152V2, NASNet"),
    "torch": (Normalize(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
              "x / 255, then ImageNet mean and std: DenseNet"),
    "raw": (Normalize(),
            "pixels 0..255 as they are, the model rescales them itself: EfficientNet, "
            "EfficientNetV2, ConvNeXt, RegNet, MobileNetV3"),
    "unit": (Normalize(scale=1 / 255),
             "x / 255: a model of your own trained on rescaled photos"),
}
# VGG16/19 and ResNet50/101/152 (v1) use mode "caffe": BGR channels minus the ImageNet
# means; the manifest has no channel order, so such a model cannot be described.
CAFFE_MODELS = "VGG16, VGG19, ResNet50/101/152 (v1)"

_NAME = re.compile(r"[A-Za-z0-9!_.'()-]+")  # a folder name the template's ModelSource accepts


class InitError(ImgpipeError):
    """What `model init` cannot infer or accept, as a sentence naming the flag to give."""


@dataclass(frozen=True)
class GraphInfo:
    """What the ONNX graph says about its input and outputs."""

    input_name: str
    input_shape: tuple[int | str | None, ...]
    input_type: str
    outputs: tuple[tuple[str, tuple[int | str | None, ...]], ...]

    def layout(self) -> str | None:
        """NCHW or NHWC where the graph fixes the channel axis at 3, else None."""
        if len(self.input_shape) != 4:
            return None
        first, last = self.input_shape[1] == 3, self.input_shape[3] == 3
        if first != last:
            return "NCHW" if first else "NHWC"
        return None

    def size(self, layout: str) -> tuple[int, int] | None:
        h, w = self.input_shape[2:4] if layout == "NCHW" else self.input_shape[1:3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def output_width(self, name: str) -> int | None:
        """Values per image of output `name` (None: a dimension is not fixed)."""
        shape = dict(self.outputs)[name]
        width = 1
        for dim in shape[1:]:
            if not isinstance(dim, int):
                return None
            width *= dim
        return width


def read_graph(path: Path) -> GraphInfo:
    """The graph's input and outputs, from an ONNX Runtime session's metadata."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
    except Exception as e:
        raise InitError(f"ONNX Runtime cannot load {path}: {e}") from e
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InitError(f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)});"
                        " imgpipe feeds one image tensor: export the model with a single input")
    (inp,) = inputs
    return GraphInfo(
        input_name=inp.name, input_shape=tuple(inp.shape), input_type=str(inp.type),
        outputs=tuple((o.name, tuple(o.shape)) for o in session.get_outputs()),
    )


def read_labels(path: Path) -> list[str]:
    """The labels as the manifest loader reads a labels file: one a line, blank lines left out."""
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise InitError(f"cannot read the labels file {path}: {e.strerror or e} (--labels)") \
            from e
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise InitError(f"the labels file {path} has no labels: give --labels a file with one "
                        "label a line, in the order of the model's outputs")
    return labels


def build_manifest(
    graph: GraphInfo,
    *,
    onnx_path: Path,
    labels: Sequence[str],
    labels_file: str,
    preset: str,
    name: str,
    version: str,
    input_size: tuple[int, int] | None = None,
    layout: str | None = None,
    output: str | None = None,
    activation: str | None = None,
    keras_mode: str | None = None,
) -> ModelManifest:
    """The manifest for the graph and the flags; `activation` None means "decide later"
    (softmax here; `choose_activation` looks at the model's scores)."""
    if preset not in PRESETS:
        raise InitError(f"--preset {preset!r} is not one of {', '.join(PRESETS)}")
    for flag, value in (("--name", name), ("--version", version)):
        if not _NAME.fullmatch(value):
            raise InitError(f"{flag} {value!r}: use letters, digits and ! _ . ' ( ) - only "
                            "(it names a folder of the bucket the model is published to)")
    chosen_layout, size = _layout_and_size(graph, layout, input_size)
    out_name, binary = _scores_output(graph, output, labels, activation)

    resize, normalize = _preset(preset, size, keras_mode)
    manifest = ModelManifest(
        name=name, version=version, file=onnx_path.name, sha256=sha256_file(onnx_path),
        input_size=size, labels=tuple(labels), input_name=graph.input_name,
        output_name=out_name, layout=chosen_layout,  # type: ignore[arg-type]
        resize=resize, normalize=normalize,
        activation=(activation or ("sigmoid" if binary else "softmax")),  # type: ignore[arg-type]
        labels_file=labels_file, directory=onnx_path.parent,
    )
    try:
        manifest.validate()
    except ImgpipeError as e:
        raise InitError(str(e)) from e
    return manifest


def _layout_and_size(graph: GraphInfo, layout: str | None,
                     input_size: tuple[int, int] | None) -> tuple[str, tuple[int, int]]:
    """The input's layout and (height, width): from the graph, else the flags."""
    if not graph.input_type.startswith("tensor(float)"):
        raise InitError(f"the graph's input {graph.input_name!r} is {graph.input_type}; imgpipe "
                        "feeds float32 (export the model with a float input)")
    shape = graph.input_shape
    if len(shape) != 4:
        raise InitError(f"the graph's input {graph.input_name!r} has shape {list(shape)}; "
                        "imgpipe feeds a batch of images, [N, 3, H, W] or [N, H, W, 3]")
    if isinstance(shape[0], int):
        raise InitError(f"the graph's batch dimension is fixed at {shape[0]} (input shape "
                        f"{list(shape)}); imgpipe classifies up to 16 photos per call: export "
                        "with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={"
                        f"'{graph.input_name}': {{0: 'batch'}}}}), or tf2onnx with "
                        "--inputs NAME[-1,H,W,3])")
    found = graph.layout()
    if found is None and all(isinstance(d, int) for d in (shape[1], shape[3])):
        raise InitError(f"the graph's input {list(shape)} has no axis of 3 channels; imgpipe "
                        "feeds RGB photos (3 channels)")
    if layout and found and layout != found:
        raise InitError(f"--layout {layout}, but the graph's input {list(shape)} is {found}: "
                        "leave --layout out")
    chosen_layout = layout or found
    if chosen_layout is None:
        raise InitError(f"the graph's input {list(shape)} does not say where the channels are: "
                        "give --layout NCHW (PyTorch) or --layout NHWC (Keras, TensorFlow)")
    size = graph.size(chosen_layout)
    if size and input_size and tuple(input_size) != size:
        raise InitError(f"--input-size {input_size[0]}x{input_size[1]}, but the graph's input "
                        f"is {size[0]}x{size[1]}: leave --input-size out")
    size = size or input_size
    if size is None:
        raise InitError(f"the graph's input {list(shape)} has no fixed height and width: give "
                        "--input-size (e.g. --input-size 224 or --input-size 224x224, "
                        "height x width), the size the model was trained at")
    return chosen_layout, size


def _scores_output(graph: GraphInfo, output: str | None, labels: Sequence[str],
                  activation: str | None) -> tuple[str, bool]:
    """The output with a score per label, and whether it is a binary classifier's."""
    out_name = _output_name(graph, output, len(labels))
    width = graph.output_width(out_name)
    binary = width == 1 and len(labels) == 2
    if width == 1 and len(labels) != 2:
        raise InitError(f"output {out_name!r} has one value per photo (a binary classifier): "
                        "give --labels a file with two labels, negative first, then positive")
    if width is not None and width != len(labels) and not binary:
        hint = (" (TensorFlow's ImageNet models often have a background class first: add it "
                "as the first label)" if width == len(labels) + 1 else "")
        raise InitError(f"output {out_name!r} has {width} values per photo but the labels file "
                        f"has {len(labels)} labels: give --labels a file with one label per "
                        f"output, in order{hint}")
    if binary and activation not in (None, "sigmoid"):
        raise InitError(f"output {out_name!r} has one value per photo and two labels: a binary "
                        "classifier reads it through a sigmoid; leave --activation out")
    return out_name, binary


def choose_activation(manifest: ModelManifest, raw: np.ndarray) -> tuple[str, str]:
    """The activation for a model whose raw outputs on the sample photos are `raw`, and why:
    rows that already are probabilities (non-negative, summing to 1) mean the graph ends in
    its own softmax (`none`); one output is a binary sigmoid; anything else, softmax."""
    if raw.shape[1] == 1:
        return "sigmoid", "one output: a binary classifier's logit"
    if _are_probabilities(raw):
        return "none", ("the graph's outputs already are probabilities (each photo's scores "
                        "sum to 1): shown as they are")
    return "softmax", "the graph's outputs are logits: softmax turns them into probabilities"


def _are_probabilities(raw: np.ndarray) -> bool:
    x = np.asarray(raw, dtype=np.float64)
    return bool(np.isfinite(x).all() and (x >= -1e-6).all()
                and np.allclose(x.sum(axis=1), 1.0, atol=1e-3))


def _output_name(graph: GraphInfo, output: str | None, n_labels: int) -> str:
    names = [n for n, _ in graph.outputs]
    if output:
        if output not in names:
            raise InitError(f"--output {output!r}: the graph's outputs are {', '.join(names)}")
        return output
    if len(names) == 1:
        return names[0]
    fitting = [n for n in names if graph.output_width(n) in (n_labels, 1 if n_labels == 2
                                                              else n_labels)]
    if len(fitting) == 1:
        return fitting[0]
    raise InitError(f"the graph has {len(names)} outputs ({', '.join(names)}): give --output "
                    "NAME, the one with a score per label")


def _preset(preset: str, size: tuple[int, int],
            keras_mode: str | None) -> tuple[Resize, Normalize]:
    if keras_mode and preset != "keras":
        raise InitError(f"--keras-mode is for --preset keras, not --preset {preset}")
    if preset == "efficientnet":
        side = min(size)
        return (Resize("crop_then_resize", "bicubic",
                       crop_fraction=side / (side + EFFICIENTNET_CROP_PADDING)),
                Normalize(scale=1.0, mean=(127.0,) * 3, std=(128.0,) * 3))
    if preset == "torchvision":
        return (Resize("resize_then_crop", "bilinear",
                       shorter_side=round(max(size) * TORCHVISION_RESIZE_RATIO)),
                Normalize(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    if not keras_mode:
        modes = "; ".join(f"{m} ({what})" for m, (_, what) in KERAS_MODES.items())
        raise InitError("Keras models differ in how they normalise pixels: give --keras-mode, "
                        f"one of {modes}. {CAFFE_MODELS} want BGR channels (mode caffe), "
                        "which imgpipe cannot feed")
    if keras_mode not in KERAS_MODES:
        raise InitError(f"--keras-mode {keras_mode!r} is not one of {', '.join(KERAS_MODES)}"
                        + (f" ({CAFFE_MODELS}' BGR mode cannot be fed)"
                           if keras_mode == "caffe" else ""))
    return Resize("stretch", "bilinear"), KERAS_MODES[keras_mode][0]


def parse_size(text: str) -> tuple[int, int]:
    """`224` or `224x192` (height x width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InitError(f"--input-size {text!r}: give a number (224) or HEIGHTxWIDTH "
                        "(224x192)") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 8:
        raise InitError(f"--input-size {text!r}: give a number (224) or HEIGHTxWIDTH "
                        "(224x192), each at least 8")
    return values[0], values[1]


def write_model_folder(manifest: ModelManifest, labels_source: Path, *,
                       force: bool = False) -> Path:
    """Write manifest.json beside the ONNX file, and the labels file there too (copied when
    it lives elsewhere); return the manifest's path."""
    folder = manifest.onnx_path.parent
    target = folder / "manifest.json"
    if target.exists() and not force:
        raise InitError(f"{target} already exists: give --force to replace it (a changed model "
                        "is a new --version)")
    labels_target = folder / (manifest.labels_file or "labels.txt")
    if labels_target.resolve() != labels_source.resolve():
        text = labels_source.read_text("utf-8")
        if labels_target.exists() and labels_target.read_text("utf-8") != text and not force:
            raise InitError(f"{labels_target} already exists with other labels: give --force "
                            "to replace it with --labels")
        labels_target.write_text(text, encoding="utf-8")
    target.write_text(manifest.to_json(), encoding="utf-8")
    return target


def with_activation(manifest: ModelManifest, activation: str) -> ModelManifest:
    return replace(manifest, activation=activation)  # type: ignore[arg-type]
