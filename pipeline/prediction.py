"""What the classifier says about one image, as plain values.

Records and the classifier both speak these types; they live apart from the classifier so
that reading or writing a record (the summary function, the tooling) never loads numpy,
Pillow or ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageTimings", "LabelScore", "Prediction"]


@dataclass(frozen=True)
class LabelScore:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    top_k: tuple[LabelScore, ...]
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class ImageTimings:
    """Where one image's time went, in milliseconds: its loader (the S3 read), its decode,
    and its share of its batch's model run (the batch's forward + postprocess time divided
    by the images in it)."""

    fetch_ms: float
    decode_ms: float
    inference_ms: float
