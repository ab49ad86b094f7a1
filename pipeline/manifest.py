"""The model manifest: what a model expects and how to read what it returns.

One frozen dataclass, read from `manifest.json` next to the ONNX file and validated on
load, so a wrong manifest fails at start-up with a message that names the field, not
with a shape error in the middle of a batch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import ModelError

__all__ = ["ModelManifest", "Resize", "Normalize", "sha256_file", "load_manifest"]

Layout = Literal["NCHW", "NHWC"]
Activation = Literal["softmax", "sigmoid", "none"]
ResizeMethod = Literal["crop_then_resize", "resize_then_crop", "stretch"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]

_LAYOUTS = ("NCHW", "NHWC")
_ACTIVATIONS = ("softmax", "sigmoid", "none")
_RESIZE_METHODS = ("crop_then_resize", "resize_then_crop", "stretch")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Resize:
    """How a decoded image becomes `input_size`.

    - `crop_then_resize`: take the centred square-ish region covering `crop_fraction` of
      each side (aspect of the model input), then resize it (EfficientNet's recipe).
    - `resize_then_crop`: resize so the shorter side is `shorter_side`, then centre-crop
      to the input size (torchvision's "resize 256, crop 224").
    - `stretch`: resize the whole image to the input size, ignoring aspect (Keras).
    """

    method: ResizeMethod = "crop_then_resize"
    interpolation: Interpolation = "bicubic"
    crop_fraction: float = 0.875
    shorter_side: int | None = None


@dataclass(frozen=True)
class Normalize:
    """tensor = (pixel * scale - mean) / std, per RGB channel."""

    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    file: str
    sha256: str
    input_size: tuple[int, int]  # (height, width)
    labels: tuple[str, ...]
    input_name: str = "input"
    output_name: str = "logits"
    layout: Layout = "NCHW"
    resize: Resize = field(default_factory=Resize)
    normalize: Normalize = field(default_factory=Normalize)
    activation: Activation = "softmax"
    labels_file: str | None = None
    top_k: int = 5
    directory: Path | None = field(default=None, compare=False)

    @property
    def model_id(self) -> str:
        """`name@version`, the sort key of every DynamoDB item."""
        return f"{self.name}@{self.version}"

    @property
    def onnx_path(self) -> Path:
        base = self.directory or Path(".")
        return base / self.file

    @property
    def num_outputs(self) -> int:
        """Width of the model's output vector (1 for a binary sigmoid classifier)."""
        if self.activation == "sigmoid" and len(self.labels) == 2:
            return 1
        return len(self.labels)

    # ---- (de)serialisation -------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], directory: Path | None = None) -> ModelManifest:
        where = f"model manifest in {directory}" if directory else "model manifest"
        if not isinstance(raw, Mapping):
            raise ModelError(f"{where}: expected a JSON object")
        known = {
            "format_version", "name", "version", "file", "sha256", "input_name",
            "output_name", "layout", "input_size", "resize", "normalize", "activation",
            "labels", "labels_file", "top_k",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelError(f"{where}: unknown field(s) {', '.join(unknown)}")
        for required in ("name", "version", "file", "sha256", "input_size"):
            if required not in raw:
                raise ModelError(f"{where}: missing required field '{required}'")
        fv = raw.get("format_version", FORMAT_VERSION)
        if fv != FORMAT_VERSION:
            raise ModelError(f"{where}: format_version {fv} is not supported (expected 1)")

        labels_file = raw.get("labels_file")
        labels: Sequence[str]
        if "labels" in raw:
            labels = raw["labels"]
        elif labels_file:
            path = (directory or Path(".")) / str(labels_file)
            try:
                labels = [ln.strip() for ln in path.read_text("utf-8").splitlines() if ln.strip()]
            except OSError as e:
                raise ModelError(f"{where}: cannot read labels file {path}: {e}") from e
        else:
            raise ModelError(f"{where}: give either 'labels' (a list) or 'labels_file'")

        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise ModelError(f"{where}: 'labels' must be a list of names")
        size = raw["input_size"]
        if isinstance(size, int):
            size = [size, size]
        if isinstance(size, str) or not isinstance(size, Sequence) or len(size) != 2:
            raise ModelError(f"{where}: 'input_size' must be a number or [height, width]")
        for section in ("resize", "normalize"):
            if not isinstance(raw.get(section, {}), Mapping):
                raise ModelError(f"{where}: '{section}' must be an object")
        resize_raw = dict(raw.get("resize", {}))
        norm_raw = dict(raw.get("normalize", {}))
        for key in ("crop_fraction", "shorter_side"):  # compared in validate(): no strings
            value = resize_raw.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
                raise ModelError(f"{where}: 'resize.{key}' must be a number, not {value!r}")
        try:
            resize = Resize(**resize_raw)
            normalize = Normalize(
                scale=float(norm_raw.get("scale", 1.0)),
                mean=_triple(norm_raw.get("mean", 0.0), "normalize.mean"),
                std=_triple(norm_raw.get("std", 1.0), "normalize.std"),
            )
            manifest = cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                file=str(raw["file"]),
                sha256=str(raw["sha256"]).lower(),
                input_name=str(raw.get("input_name", "input")),
                output_name=str(raw.get("output_name", "logits")),
                layout=raw.get("layout", "NCHW"),
                input_size=(int(size[0]), int(size[1])),
                resize=resize,
                normalize=normalize,
                activation=raw.get("activation", "softmax"),
                labels=tuple(str(x) for x in labels),
                labels_file=str(labels_file) if labels_file else None,
                top_k=int(raw.get("top_k", 5)),
                directory=directory,
            )
        except (TypeError, ValueError, IndexError) as e:
            raise ModelError(f"{where}: {e}") from e
        manifest.validate()
        return manifest

    @classmethod
    def from_json(cls, text: str, directory: Path | None = None) -> ModelManifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError(f"model manifest is not valid JSON: {e}") from e
        return cls.from_dict(raw, directory)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format_version": FORMAT_VERSION}
        for key, value in asdict(self).items():
            if key in ("directory",):
                continue
            if key == "labels" and self.labels_file:
                continue
            if key == "labels_file" and not value:
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        out["resize"] = {k: v for k, v in asdict(self.resize).items() if v is not None}
        out["normalize"] = {
            "scale": self.normalize.scale,
            "mean": list(self.normalize.mean),
            "std": list(self.normalize.std),
        }
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    # ---- validation --------------------------------------------------------------------

    def validate(self) -> None:
        def bad(msg: str) -> ModelError:
            return ModelError(f"model manifest for {self.name!r}: {msg}")

        if not self.name or "@" in self.name or "#" in self.name:
            raise bad("'name' must be non-empty and contain neither '@' nor '#'")
        if not self.version or "@" in self.version or "#" in self.version:
            raise bad("'version' must be non-empty and contain neither '@' nor '#'")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise bad("'sha256' must be 64 hex digits (sha256sum of the ONNX file)")
        if self.layout not in _LAYOUTS:
            raise bad(f"'layout' is {self.layout!r}; expected one of {', '.join(_LAYOUTS)}")
        if self.activation not in _ACTIVATIONS:
            raise bad(f"'activation' is {self.activation!r}; expected one of "
                      f"{', '.join(_ACTIVATIONS)}")
        h, w = self.input_size
        if not (8 <= h <= 4096 and 8 <= w <= 4096):
            raise bad(f"'input_size' {h}x{w} is outside 8..4096")
        r = self.resize
        if r.method not in _RESIZE_METHODS:
            raise bad(f"'resize.method' is {r.method!r}; expected one of "
                      f"{', '.join(_RESIZE_METHODS)}")
        if r.interpolation not in _INTERPOLATIONS:
            raise bad(f"'resize.interpolation' is {r.interpolation!r}; expected one of "
                      f"{', '.join(_INTERPOLATIONS)}")
        if not 0.1 <= r.crop_fraction <= 1.0:
            raise bad("'resize.crop_fraction' must be in 0.1..1.0")
        if r.method == "resize_then_crop" and (r.shorter_side is None
                                                 or r.shorter_side < max(h, w)):
            raise bad("'resize.shorter_side' is required for resize_then_crop and must be "
                      "at least the input size")
        n = self.normalize
        if not math.isfinite(n.scale) or n.scale <= 0:
            raise bad("'normalize.scale' must be a positive number")
        if any(s <= 0 or not math.isfinite(s) for s in n.std):
            raise bad("'normalize.std' values must be positive")
        if not self.labels:
            raise bad("no labels")
        if self.activation == "sigmoid" and len(self.labels) == 1:
            raise bad("a one-output sigmoid classifier needs two labels: "
                      "[negative, positive]")
        if self.top_k < 1:
            raise bad("'top_k' must be at least 1")

    def verify_file(self) -> Path:
        """Check that the ONNX file exists and matches `sha256`; return its path."""
        path = self.onnx_path
        try:
            stat = path.stat()
        except OSError:
            stat = None
        if stat is None or not path.is_file():
            raise ModelError(f"model file {path} is missing (manifest {self.model_id})")
        # Hashing 19 MB costs ~20 ms of cold start: do it once per file version per process.
        fingerprint = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        digest = _VERIFIED.get(fingerprint) or sha256_file(path)
        if digest == self.sha256:
            _VERIFIED[fingerprint] = digest
        if digest != self.sha256:
            raise ModelError(
                f"model file {path} is corrupt or not the one the manifest describes: "
                f"sha256 {digest[:12]}... != {self.sha256[:12]}... Re-copy the file or "
                f"re-export it (make model)."
            )
        return path


_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        v = float(value)
        return (v, v, v)
    vals = [float(x) for x in value]
    if len(vals) != 3:
        raise ValueError(f"'{name}' must be a number or a list of 3 numbers")
    return (vals[0], vals[1], vals[2])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(path: str | Path) -> ModelManifest:
    """Load `manifest.json` (or a directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    try:
        text = p.read_text("utf-8")
    except OSError as e:
        raise ModelError(f"cannot read model manifest {p}: {e.strerror or e}") from e
    return ModelManifest.from_json(text, directory=p.parent)
