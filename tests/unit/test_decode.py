"""Bad and unusual input for `decode_image` / `prepare_pixels` (RELIABILITY.md "Bad input").

Every refusal must be a `PermanentError` whose message a person understands, so the tests
check the key words of each message, not just the exception type.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image, ImageFile, JpegImagePlugin

from pipeline.decode import ALLOWED_FORMATS, DecodeLimits, decode_image, prepare_pixels
from pipeline.errors import PermanentError
from pipeline.manifest import ModelManifest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"
Encode = Callable[..., bytes]


# ---- helpers -----------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A syntactically valid PNG whose IHDR claims `width`x`height`, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF whose screen and first frame claim `width`x`height`, with one LZW code."""
    screen = b"GIF89a" + struct.pack("<HH", width, height) + b"\x80\x00\x00"
    palette = b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, width, height) + b"\x00"
    return screen + palette + frame + b"\x02\x02\x44\x01\x00" + b"\x3b"


def pixels(data: bytes, manifest: ModelManifest, **limits: int) -> np.ndarray:
    px, *_ = prepare_pixels(data, manifest, DecodeLimits(**limits) if limits else None)
    return px


def refusal(data: bytes, manifest: ModelManifest, limits: DecodeLimits | None = None) -> str:
    with pytest.raises(PermanentError) as info:
        prepare_pixels(data, manifest, limits)
    return str(info.value)


def forbid_decoders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make Pillow's `open`, every pixel load and Ghostscript fail loudly if they run."""
    calls: list[str] = []

    def forbidden(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} must not run for refused input")

        return call

    monkeypatch.setattr(Image, "open", forbidden("PIL.Image.open"))
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", forbidden("EpsImageFile._open"))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", forbidden("EpsImagePlugin.Ghostscript"))
    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden("ImageFile.load"))
    return calls


@pytest.fixture
def no_decoder(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test if Pillow opens anything or any decoder (Ghostscript included) runs."""
    calls = forbid_decoders(monkeypatch)
    yield calls
    assert calls == []


@pytest.fixture
def no_pixel_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Header parsing is allowed; allocating and decoding pixels is not."""

    def forbidden(self: Any) -> Any:
        raise AssertionError(f"{type(self).__name__}.load() ran: the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)


def colour_tile(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """An asymmetric test picture: four differently coloured quadrants plus a gradient."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.where(x < w // 2, 230, 20)
    arr[..., 1] = np.where(y < h // 3, 210, 40)
    arr[..., 2] = (x * 255 // max(1, w - 1)).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# ---- decompression bombs and limits -------------------------------------------------------


@pytest.mark.parametrize("build", [png_header_only, gif_header_only], ids=["png", "gif"])
def test_decompression_bomb_is_refused_from_the_header(
    build: Callable[[int, int], bytes], default_manifest: ModelManifest, no_pixel_load: None
) -> None:
    bomb = build(20000, 20000)
    assert len(bomb) < 200  # the file is tiny; the claimed image is 1.2 GB of RGB

    tracemalloc.start()
    try:
        message = refusal(bomb, default_manifest)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

    assert message == "image too large: 20000x20000 pixels exceeds the 40 MP limit"
    assert peak < 5_000_000  # Python-side; the capped child below covers C allocations


# Run in a child whose address space is capped a little above what it already uses: any
# attempt to allocate the claimed image (or a huge resize canvas) fails with MemoryError
# there instead of succeeding quietly. Pillow allocates in C, which tracemalloc cannot see.
_CAPPED_CHILD = r"""
import json, resource, sys
from pipeline.decode import prepare_pixels
from pipeline.errors import PermanentError
from pipeline.manifest import ModelManifest

cases = json.loads(sys.argv[1])
manifests = {name: ModelManifest.from_dict(raw) for name, raw in json.loads(sys.argv[2]).items()}
with open("/proc/self/statm") as f:
    vm = int(f.read().split()[0]) * resource.getpagesize()
cap = vm + 300 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
out = []
for hex_data, manifest in cases:
    try:
        px, w, h, fmt = prepare_pixels(bytes.fromhex(hex_data), manifests[manifest])
        out.append(["ok", [int(v) for v in px.reshape(-1, 3).mean(axis=0).round()]])
    except PermanentError as e:
        out.append(["refused", str(e)])
    except MemoryError:
        out.append(["MemoryError", ""])
print(json.dumps(out))
"""


def test_bombs_and_extreme_aspect_never_allocate_large_buffers(encode: Encode) -> None:
    default = json.loads((ROOT / "model" / "manifest.json").read_text())
    default.pop("labels_file")
    manifests = {
        "default": default | {"labels": ["x"]},
        "resnet": {
            "name": "r", "version": "1", "file": "r.onnx", "sha256": "0" * 64,
            "input_size": 224, "labels": ["x"],
            "resize": {"method": "resize_then_crop", "shorter_side": 256,
                       "interpolation": "bilinear"},
        },
    }
    tall = encode(Image.new("RGB", (1, 100_000), (10, 200, 30)), "PNG")
    wide = encode(Image.new("RGB", (100_000, 1), (10, 200, 30)), "PNG")
    cases = [
        [png_header_only(20000, 20000).hex(), "default"],
        [gif_header_only(20000, 20000).hex(), "default"],
        [tall.hex(), "resnet"],  # naive resize: 256 x 25,600,000 pixels (~20 GB)
        [wide.hex(), "resnet"],
        [tall.hex(), "default"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _CAPPED_CHILD, json.dumps(cases), json.dumps(manifests)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert results[0] == ["refused", "image too large: 20000x20000 pixels exceeds the 40 MP limit"]
    assert results[1] == results[0]
    for status, mean in results[2:]:
        assert status == "ok"
        assert mean == [10, 200, 30]


def test_pixel_limit_is_configurable_below_the_default(
    default_manifest: ModelManifest, encode: Encode
) -> None:
    data = encode(Image.new("RGB", (1200, 1000), (9, 9, 9)), "PNG")
    message = refusal(data, default_manifest, DecodeLimits(max_pixels=1_000_000))
    assert message == "image too large: 1200x1000 pixels exceeds the 1 MP limit"
    # the same image passes the default limit, and an image at the limit passes
    assert pixels(data, default_manifest).shape == (224, 224, 3)
    at_limit = encode(Image.new("RGB", (1000, 1000), (9, 9, 9)), "PNG")
    assert pixels(at_limit, default_manifest, max_pixels=1_000_000).shape == (224, 224, 3)
    small = refusal(at_limit, default_manifest, DecodeLimits(max_pixels=250_000))
    assert "1000x1000 pixels exceeds the 250,000-pixel limit" in small


def test_decode_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        DecodeLimits(max_pixels=0)
    with pytest.raises(ValueError, match="positive"):
        DecodeLimits(max_bytes=0)


def test_pillow_bomb_limit_still_applies_when_warnings_are_silenced(
    default_manifest: ModelManifest, no_pixel_load: None
) -> None:
    # A configured limit above Pillow's (~89 MP) must not let a 100 MP image through as a
    # warning nobody reads, whatever the warnings filters are at the time.
    data = png_header_only(10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        message = refusal(data, default_manifest, DecodeLimits(max_pixels=200_000_000))
    assert message.startswith("image too large: 10000x10000 pixels exceeds the")


def test_object_over_max_bytes_is_refused_before_decoding(
    default_manifest: ModelManifest, sample_bytes: Callable[[str], bytes], no_decoder: list[str]
) -> None:
    data = sample_bytes("coffee.jpg")
    message = refusal(data, default_manifest, DecodeLimits(max_bytes=len(data) - 1))
    assert message.startswith("file too large:")
    assert f"{len(data):,} bytes exceeds the {len(data) - 1:,}-byte limit" in message


# ---- formats refused before any decoder ---------------------------------------------------


def _eps_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, "EPS")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        pytest.param(_eps_bytes(), "PostScript/EPS files are not accepted", id="eps"),
        pytest.param(b"\xc5\xd0\xd3\xc6" + b"\x00" * 60, "EPS files are not accepted",
                     id="eps-dos-binary"),
        pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
                     "PDF files are not accepted", id="pdf"),
        pytest.param(b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03" + b"\x00" * 50,
                     "Photoshop (PSD) files are not accepted", id="psd"),
        pytest.param(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
                     "SVG drawing, not a raster image", id="svg"),
        pytest.param(b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/'
                     b'2000/svg"><rect width="5" height="5"/></svg>',
                     "SVG drawing, not a raster image", id="svg-with-prolog"),
        pytest.param(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 40,
                     "video (ISO media, brand 'mp42') is not accepted", id="mp4"),
        pytest.param(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40,
                     "HEIF/AVIF image", id="heic"),
        pytest.param(b"PK\x03\x04" + b"\x00" * 40, "ZIP archive files are not accepted",
                     id="zip"),
    ],
)
def test_non_image_formats_are_refused_before_any_decoder(
    data: bytes, words: str, default_manifest: ModelManifest, no_decoder: list[str]
) -> None:
    message = refusal(data, default_manifest)
    assert message.startswith("unsupported format:")
    assert words in message
    assert f"send {ALLOWED_TEXT}" in message


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PCX", "PPM"])
def test_pillow_readable_but_not_allowed_formats_are_refused(
    fmt: str, default_manifest: ModelManifest, encode: Encode, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fmt not in ALLOWED_FORMATS
    data = encode(colour_tile((32, 32)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow could read it...
    calls = forbid_decoders(monkeypatch)
    message = refusal(data, default_manifest)  # ...but it never gets the chance
    assert calls == []
    assert ALLOWED_TEXT in message
    assert message.startswith(("unsupported format:", "not an image:"))


def test_empty_bytes(default_manifest: ModelManifest) -> None:
    assert refusal(b"", default_manifest) == "empty file: the object has 0 bytes"


def test_random_bytes(default_manifest: ModelManifest) -> None:
    data = b"\x07" + np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    message = refusal(data, default_manifest)
    assert message.startswith("not an image:")
    assert "does not start like any image format" in message
    assert ALLOWED_TEXT in message


@pytest.mark.parametrize(
    "text",
    ["hello, this is a note and not a photo\n", "name,score\nchelsea,0.93\n", "café ☕ ünïcödé\n"],
)
def test_text(text: str, default_manifest: ModelManifest) -> None:
    assert refusal(text.encode() * 5, default_manifest) == "not an image: the data is plain text"


def test_truncated_jpeg(
    default_manifest: ModelManifest, sample_bytes: Callable[[str], bytes]
) -> None:
    data = sample_bytes("coffee.jpg")
    message = refusal(data[: len(data) // 2], default_manifest)
    assert message.startswith("truncated image:")
    assert "JPEG data ends early" in message


def test_jpeg_with_a_garbage_body(default_manifest: ModelManifest) -> None:
    message = refusal(b"\xff\xd8\xff\xe0" + b"\x13" * 200, default_manifest)
    assert "JPEG" in message
    assert message.startswith(("not a valid JPEG image", "cannot decode", "truncated image"))


_PREFIXES = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
             b"RIFF\x00\x01\x00\x00WEBPVP8 ", b""]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(_PREFIXES), body=st.binary(max_size=300))
def test_any_bytes_give_pixels_or_a_permanent_error(
    prefix: bytes, body: bytes, default_manifest: ModelManifest
) -> None:
    try:
        px, width, height, fmt = prepare_pixels(
            prefix + body, default_manifest, DecodeLimits(max_pixels=4_000_000)
        )
    except PermanentError as e:
        assert str(e) and str(e)[0].islower()
        return
    assert px.shape == (224, 224, 3) and px.dtype == np.uint8
    assert fmt in ALLOWED_FORMATS and width >= 1 and height >= 1


# ---- orientation and colour modes ---------------------------------------------------------


def test_exif_orientation_is_applied(default_manifest: ModelManifest, encode: Encode) -> None:
    picture = colour_tile((320, 200))
    plain = encode(picture, "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated_tag = encode(picture, "JPEG", quality=95, exif=exif.tobytes())

    # What a viewer shows: the same decoded pixels, turned 90 degrees clockwise.
    shown = Image.open(io.BytesIO(plain)).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    expected, *_ = prepare_pixels(encode(shown, "PNG"), default_manifest)

    got, width, height, _ = prepare_pixels(rotated_tag, default_manifest)
    assert (width, height) == (200, 320)
    np.testing.assert_array_equal(got, expected)
    unrotated, *_ = prepare_pixels(plain, default_manifest)
    assert np.abs(unrotated.astype(int) - expected).mean() > 20  # the test can tell


def test_cmyk_jpeg(default_manifest: ModelManifest, encode: Encode) -> None:
    data = encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95)
    px = pixels(data, default_manifest)
    np.testing.assert_allclose(px.reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=3)


def test_palette_png_with_transparency_becomes_white(
    default_manifest: ModelManifest, encode: Encode
) -> None:
    im = Image.new("P", (64, 64), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black (transparent), 1 red
    im.paste(1, (16, 16, 48, 48))
    px = pixels(encode(im, "PNG", transparency=0), default_manifest)
    assert px[:20, :20].tolist() == np.full((20, 20, 3), 255).tolist()  # not black
    assert px[112, 112].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    ("mode", "key"), [("RGB", (0, 0, 0)), ("L", 0)], ids=["rgb-colour-key", "grey-colour-key"]
)
def test_png_colour_key_transparency_becomes_white(
    mode: str, key: Any, default_manifest: ModelManifest, encode: Encode
) -> None:
    im = Image.new(mode, (64, 64), key)
    im.paste((0, 200, 0) if mode == "RGB" else 200, (16, 16, 48, 48))
    px = pixels(encode(im, "PNG", transparency=key), default_manifest)
    assert px[:20, :20].min() == 255
    assert px[112, 112].tolist() == ([0, 200, 0] if mode == "RGB" else [200, 200, 200])


def test_la_composited_on_white(default_manifest: ModelManifest, encode: Encode) -> None:
    im = Image.new("LA", (64, 64), (0, 0))
    im.paste((100, 255), (16, 16, 48, 48))
    px = pixels(encode(im, "PNG"), default_manifest)
    assert px[:20, :20].min() == 255
    assert px[112, 112].tolist() == [100, 100, 100]


def test_rgba_composited_on_white(default_manifest: ModelManifest, encode: Encode) -> None:
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    im.paste((0, 0, 255, 255), (8, 8, 32, 56))
    im.paste((0, 0, 255, 128), (32, 8, 56, 56))  # half transparent blue over white
    px = pixels(encode(im, "PNG"), default_manifest)
    assert px[:10, :10].min() == 255
    assert px[112, 40].tolist() == [0, 0, 255]
    np.testing.assert_allclose(px[112, 180], [127, 127, 255], atol=1)


def test_one_bit(default_manifest: ModelManifest, encode: Encode) -> None:
    im = Image.new("1", (64, 64), 0)
    im.paste(1, (32, 0, 64, 64))
    px = pixels(encode(im, "PNG"), default_manifest)
    assert px[:, :90].max() == 0
    assert px[:, -90:].min() == 255


def test_sixteen_bit_grey_is_scaled_not_clipped(
    default_manifest: ModelManifest, encode: Encode
) -> None:
    arr = np.full((64, 96), 65535, dtype=np.uint16)
    arr[:, 48:] = 32768
    arr[:, 80:] = 1000
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16 bits in the file
    px, *_ = prepare_pixels(data, ModelManifest.from_dict(_nearest_stretch(96, 64)))
    assert px[:, :40].min() == 255 and px[:, :40].max() == 255
    assert set(np.unique(px[:, 50:78])) <= {127, 128}  # 32768 / 65535 * 255 = 127.5
    assert set(np.unique(px[:, 82:])) == {4}  # 1000 / 65535 * 255 = 3.9, not 255
    # and through the default recipe too
    assert pixels(data, default_manifest)[:, :50].min() == 255


def _nearest_stretch(width: int, height: int) -> dict[str, Any]:
    return {
        "name": "n", "version": "1", "file": "n.onnx", "sha256": "0" * 64,
        "input_size": [height, width], "labels": ["a", "b"],
        "resize": {"method": "stretch", "interpolation": "nearest"},
    }


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_first_frame_wins(
    fmt: str, default_manifest: ModelManifest, encode: Encode
) -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    params: dict[str, Any] = {"save_all": True, "append_images": frames[1:], "duration": 100}
    if fmt == "WEBP":
        params["lossless"] = True
    data = encode(frames[0], fmt, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    px = pixels(data, default_manifest)
    np.testing.assert_allclose(px.reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=2)


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (1, 1)], ids=str)
def test_extreme_aspect_and_single_pixel(
    size: tuple[int, int], default_manifest: ModelManifest, encode: Encode
) -> None:
    data = encode(Image.new("RGB", size, (12, 34, 56)), "PNG")
    decoded = decode_image(data, default_manifest)
    assert decoded.tensor.shape == (3, 224, 224)
    assert (decoded.width, decoded.height) == size
    expected = (np.array([12, 34, 56], dtype=np.float32) - 127) / 128
    np.testing.assert_allclose(decoded.tensor[:, 0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(decoded.tensor.reshape(3, -1).std(axis=1), 0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP", "GIF"])
def test_every_allowed_format_decodes(
    fmt: str, default_manifest: ModelManifest, encode: Encode
) -> None:
    im = Image.new("RGB", (40, 30), (0, 0, 255))
    params = {"lossless": True} if fmt == "WEBP" else {}
    px, width, height, got_fmt = prepare_pixels(encode(im, fmt, **params), default_manifest)
    assert (width, height, got_fmt) == (40, 30, fmt)
    np.testing.assert_allclose(px.reshape(-1, 3).mean(axis=0), [0, 0, 255], atol=1)


# ---- draft (DCT-scaled) decoding of large JPEGs ------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    photo = Image.open(ROOT / "samples" / "chelsea.jpg").convert("RGB")
    big = photo.resize((4000, 3000), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def centre_crop_then_resize(im: Image.Image, side: int, fraction: float) -> Image.Image:
    """The EfficientNet recipe for a square input, written out independently."""
    w, h = im.size
    crop = round(min(w, h) * fraction)
    left, top = (w - crop) // 2, (h - crop) // 2
    region = im.crop((left, top, left + crop, top + crop))
    return region.resize((side, side), Image.Resampling.BICUBIC)


def test_large_jpeg_is_draft_decoded_and_close_to_a_full_decode(
    big_jpeg: bytes, default_manifest: ModelManifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    drafted: list[tuple[tuple[int, int], tuple[int, int]]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: Any, mode: Any, size: Any) -> Any:
        before = self.size
        result = real_draft(self, mode, size)
        drafted.append((before, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    px, width, height, fmt = prepare_pixels(big_jpeg, default_manifest)

    assert (width, height, fmt) == (4000, 3000, "JPEG")
    assert len(drafted) == 1
    before, after = drafted[0]
    assert before == (4000, 3000)
    assert after[0] <= 1000 and after[1] <= 750  # decoded at 1/4 scale or less
    assert min(after) >= 224 / 0.875  # but still covering the model's crop

    full = Image.open(io.BytesIO(big_jpeg))
    full.load()  # no draft: every pixel decoded
    reference = np.asarray(centre_crop_then_resize(full.convert("RGB"), 224, 0.875))
    diff = np.abs(px.astype(np.float64) - reference)
    assert diff.mean() < 3.0
    assert np.percentile(diff, 99) < 25


def test_small_jpeg_is_not_reduced(default_manifest: ModelManifest, encode: Encode) -> None:
    data = encode(colour_tile((300, 260)), "JPEG", quality=95)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    expected = np.asarray(centre_crop_then_resize(full, 224, 0.875))
    np.testing.assert_array_equal(pixels(data, default_manifest), expected)


# ---- imgpipe's own sentences, never Pillow's ------------------------------------------------


def webp_header_only(width: int, height: int, chunk: bytes) -> bytes:
    if chunk == b"VP8L":
        bits = (width - 1) | ((height - 1) << 14)
        payload = b"\x2f" + struct.pack("<I", bits) + bytes(8)
    else:  # VP8X: flags, reserved, then canvas width-1 and height-1 in 24 bits each
        payload = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + chunk + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("chunk", [b"VP8L", b"VP8X"], ids=["lossless", "extended"])
def test_a_webp_past_pillows_own_limit_gets_imgpipes_sentence(
        chunk: bytes, default_manifest: ModelManifest) -> None:
    message = refusal(webp_header_only(16383, 16383, chunk), default_manifest)
    assert message == "image too large: 16383x16383 pixels exceeds the 40 MP limit"


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
def test_a_text_chunk_bomb_is_named_without_pillow_internals(
        kind: bytes, encode: Encode, default_manifest: ModelManifest) -> None:
    png = encode(colour_tile((8, 8)), "PNG")
    inflated = zlib.compress(b"a" * (64 * 1024 * 1024), 9)
    data = (b"Comment\x00\x00" + inflated if kind == b"zTXt"
            else b"Comment\x00\x01\x00\x00\x00" + inflated)
    bomb = png[:33] + png_chunk(kind, data) + png[33:]
    message = refusal(bomb, default_manifest)
    assert message.startswith("PNG metadata too large: a compressed text chunk expands")
    assert "PngImagePlugin" not in message and "MAX_TEXT" not in message


# ---- large images: reduced strip by strip, same result as the whole-image path -------------


def _manifest(resize: dict[str, Any]) -> ModelManifest:
    raw = json.loads((ROOT / "model" / "manifest.json").read_text())
    raw.pop("labels_file")
    return ModelManifest.from_dict(raw | {"labels": ["x"], "resize": resize})


def _large(mode: str) -> Image.Image:
    """A 2400x2000 (4.8 MP) picture with detail, in `mode`."""
    base = Image.radial_gradient("L").resize((2400, 2000))
    ramp = Image.linear_gradient("L").resize((2400, 2000))
    rgb = Image.merge("RGB", (base, ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(ramp.transpose(Image.Transpose.ROTATE_180))
        return rgba
    if mode == "P":
        return rgb.quantize(64)
    if mode in ("I;16", "F"):
        scale = 257 if mode == "I;16" else 1 / 255
        return Image.fromarray((np.asarray(base, dtype=np.float64) * scale).astype(
            np.uint16 if mode == "I;16" else np.float32))
    return rgb


_CROP_RESIZE = {"method": "crop_then_resize", "crop_fraction": 0.875, "interpolation": "bicubic"}
_RESIZE_CROP = {"method": "resize_then_crop", "shorter_side": 256, "interpolation": "bilinear"}
_STRETCH = {"method": "stretch", "interpolation": "bicubic"}


@pytest.mark.parametrize(("mode", "resize", "orientation"), [
    ("RGB", _CROP_RESIZE, 1), ("RGB", _RESIZE_CROP, 6), ("RGB", _STRETCH, 8),
    ("RGBA", _CROP_RESIZE, 1), ("RGBA", _RESIZE_CROP, 3),
    ("P", _CROP_RESIZE, 6), ("I;16", _CROP_RESIZE, 1), ("I;16", _STRETCH, 6),
    ("F", _CROP_RESIZE, 6), ("F", _RESIZE_CROP, 1),
])
def test_large_images_go_through_strips_with_the_same_result(
    mode: str, resize: dict[str, Any], orientation: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above STRIP_THRESHOLD_PIXELS the region is reduced strip by strip before the
    manifest's resample; the model must see (nearly) what the whole-image path gives."""
    import pipeline.decode

    im = _large(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "TIFF" if mode == "F" else "PNG", exif=exif)
    data = buf.getvalue()
    manifest = _manifest(resize)
    assert im.width * im.height > pipeline.decode.STRIP_THRESHOLD_PIXELS
    strips = prepare_pixels(data, manifest)
    monkeypatch.setattr(pipeline.decode, "STRIP_THRESHOLD_PIXELS", 10**9)
    whole = prepare_pixels(data, manifest)
    assert strips[1:] == whole[1:]  # width, height (upright), format
    diff = np.abs(strips[0].astype(np.int16) - whole[0].astype(np.int16))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, (diff.mean(), diff.max())


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_normalising_by_table_gives_the_arithmetics_bits(layout: str) -> None:
    """The table lookup must equal `pixels * scale / std - mean / std` in float32 exactly:
    the int8 model's calibration (model/quantize.py) is reproduced from these tensors."""
    import dataclasses

    from pipeline.decode import normalize_pixels
    from pipeline.manifest import Normalize, load_manifest

    base = load_manifest(Path(__file__).resolve().parents[2] / "model")
    for norm in (base.normalize, Normalize(scale=1 / 255, mean=(0.485, 0.456, 0.406),
                                           std=(0.229, 0.224, 0.225))):
        manifest = dataclasses.replace(base, layout=layout, normalize=norm)
        # every value in every channel, and a photo-like array
        pixels = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=-1)
        photo = np.random.default_rng(7).integers(0, 256, (224, 224, 3), dtype=np.uint8)
        for p in (pixels, photo):
            std = np.asarray(norm.std, dtype=np.float32)
            want = p.astype(np.float32) * (np.float32(norm.scale) / std) - (
                np.asarray(norm.mean, dtype=np.float32) / std)
            if layout == "NCHW":
                want = want.transpose(2, 0, 1)
            got = normalize_pixels(p, manifest)
            assert got.dtype == np.float32 and got.flags.c_contiguous
            assert got.shape == want.shape and np.array_equal(got, want)
