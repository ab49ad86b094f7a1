"""Fixtures for the unit tests: no network, image encoding, the packaged and tiny models."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.manifest import ModelManifest, load_manifest
from tests.tiny_models import TinyModel, make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
MODEL_DIR = ROOT / "model"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Unit tests never talk to the network (Unix sockets stay usable)."""

    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        raise AssertionError(f"unit tests must not use the network (connect to {address!r})")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded)
    yield


@pytest.fixture(scope="session")
def default_manifest() -> ModelManifest:
    """The packaged EfficientNet-Lite0 manifest (labels read from labels.txt)."""
    return load_manifest(MODEL_DIR)


@pytest.fixture(scope="session")
def sample_bytes() -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        return (SAMPLES / name).read_bytes()

    return read


def encode_image(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


@pytest.fixture(scope="session")
def encode() -> Callable[..., bytes]:
    """`encode(image, "PNG", **save_params) -> bytes`."""
    return encode_image


@pytest.fixture
def tiny_model(tmp_path: Path) -> Callable[..., TinyModel]:
    """`tiny_model(manifest_fields, outputs=None, name="m") -> TinyModel` in tmp_path."""

    def build(fields: dict[str, Any], outputs: int | None = None, name: str = "m") -> TinyModel:
        return make_tiny_model(tmp_path / name, fields, outputs=outputs)

    return build
