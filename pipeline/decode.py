"""Image bytes -> model input, fast and safely.

Decoding is where real photos spend their time and where hostile files do their harm, so
this module does three things in order:

1. *Refuse early.* The format is sniffed from the first bytes and checked against an
   allow-list before Pillow picks a decoder (EPS would start Ghostscript); Pillow is then
   restricted to the same formats. The header's dimensions are checked against a pixel
   limit before any pixel is allocated, so a 20000x20000 "bomb" in a 100-byte file costs
   nothing.
2. *Decode no more than needed.* JPEGs are decoded with DCT scaling (`Image.draft`) to the
   smallest power-of-two reduction that still covers the model's crop: a 12 MP photo is
   decoded at 1/8 scale, ~4x faster than a full decode.
3. *Normalise everything to RGB.* EXIF orientation, CMYK, palettes with transparency,
   LA/RGBA (composited on white), 1-bit and 16-bit (scaled, not clipped), first frame of
   animations.

Every refusal is a `PermanentError` whose message a person understands.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import PermanentError
from pipeline.manifest import ModelManifest

__all__ = [
    "ALLOWED_FORMATS",
    "DecodeLimits",
    "DecodedImage",
    "decode_image",
    "prepare_pixels",
    "normalize_pixels",
    "sniff_format",
]

# Pillow's own decompression-bomb warning becomes an error; our pixel limit (below
# Pillow's) normally triggers first, but a limit configured above it must not turn the
# check into a warning nobody reads. Set once at import: `warnings.catch_warnings` is not
# thread-safe and decoding runs in a thread pool.
warnings.simplefilter("error", Image.DecompressionBombWarning)

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ALLOWED_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# (prefix, offset, name): `name` must read well before "files"
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"%PDF", 0, "PDF"),
    (b"%!PS", 0, "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS"),
    (b"8BPS", 0, "Photoshop (PSD)"),
    (b"PK\x03\x04", 0, "ZIP archive"),
    (b"\x1f\x8b", 0, "gzip archive"),
    (b"\x00\x00\x01\x00", 0, "Windows icon"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000 codestream"),
    (b"icns", 0, "Apple icon"),
    (b"\x1aE\xdf\xa3", 0, "Matroska/WebM video"),
)


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what `decode_image` accepts.

    `max_pixels` is well under Pillow's own default (~89 MP); 40 MP covers every phone and
    most DSLR photos while capping the worst-case allocation of one decode.
    """

    max_pixels: int = 40_000_000
    max_bytes: int = 50 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise ValueError("decode limits must be positive")


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, resized image ready for the model, plus what we learned about it."""

    tensor: np.ndarray  # float32, (C, H, W) or (H, W, C) per the manifest's layout
    width: int  # of the original image, after EXIF orientation
    height: int
    format: str  # "JPEG", "PNG", ...


def sniff_format(head: bytes) -> str:
    """Name the format of data starting with `head`, or raise `PermanentError`.

    Returns one of `ALLOWED_FORMATS` when the data looks like an allowed image.
    """
    for prefix, offset, name in _SIGNATURES:
        if head[offset:offset + len(prefix)] == prefix:
            if name in ALLOWED_FORMATS:
                return name
            raise PermanentError(
                f"unsupported format: {name} files are not accepted; send {_ALLOWED_TEXT}"
            )
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] == b"RIFF":
        raise PermanentError(
            f"unsupported format: RIFF {head[8:12].decode('latin-1')!r} data (audio or "
            f"video?) is not accepted; send {_ALLOWED_TEXT}"
        )
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("latin-1", "replace").strip()
        kind = "HEIF/AVIF image" if brand in ("heic", "heix", "mif1", "avif") else "video"
        raise PermanentError(
            f"unsupported format: {kind} (ISO media, brand {brand!r}) is not accepted; "
            f"send {_ALLOWED_TEXT}"
        )
    stripped = head.lstrip()
    if stripped[:1] == b"<":
        what = "an SVG drawing" if b"<svg" in head.lower() else "XML or HTML text"
        raise PermanentError(
            f"unsupported format: the data is {what}, not a raster image; send "
            f"{_ALLOWED_TEXT}"
        )
    if _looks_like_text(head):
        raise PermanentError("not an image: the data is plain text")
    raise PermanentError(
        f"not an image: the data does not start like any image format ({_ALLOWED_TEXT})"
    )


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A cut in the middle of a multi-byte character at the end is still text: drop the
        # 1-3 bytes of that character only (dropping 3 could split the one before it).
        for cut in (1, 2, 3):
            try:
                text = head[:-cut].decode("utf-8")
                break
            except UnicodeDecodeError:
                continue
        else:
            return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(1, len(text))


def decode_image(
    data: bytes, manifest: ModelManifest, limits: DecodeLimits | None = None
) -> DecodedImage:
    """Decode `data` and turn it into the model's input tensor (one image, no batch axis)."""
    pixels, width, height, fmt = prepare_pixels(data, manifest, limits)
    return DecodedImage(normalize_pixels(pixels, manifest), width, height, fmt)


def prepare_pixels(
    data: bytes, manifest: ModelManifest, limits: DecodeLimits | None = None
) -> tuple[np.ndarray, int, int, str]:
    """Decode and resize: returns (uint8 HxWx3 RGB at the model's size, width, height, format).

    This is everything but the normalisation, so exporters and tests can keep the exact
    pixels a model saw.
    """
    limits = limits or DecodeLimits()
    if not data:
        raise PermanentError("empty file: the object has 0 bytes")
    if len(data) > limits.max_bytes:
        raise PermanentError(
            f"file too large: {len(data):,} bytes exceeds the {limits.max_bytes:,}-byte limit"
        )
    fmt = sniff_format(bytes(data[:64]))
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own check fired at open (its limit is above ours): say the same sentence
        # ours would, with the header's size, rather than Pillow's DOS-attack wording.
        raise PermanentError(_bomb_message(data, fmt, limits, e)) from e
    except Exception as e:  # Pillow raises many types for garbage headers
        raise PermanentError(f"not a valid {fmt} image: {_reason(e)}") from e

    # The data is already in memory: hand it to the decoder in one call instead of Pillow's
    # 64 KB steps (a 3 MB photo: ~46 GIL round-trips and buffer copies fewer; same pixels).
    im.decodermaxblock = max(im.decodermaxblock, len(data))
    try:
        return _prepare_opened(im, fmt, manifest, limits)
    finally:
        im.close()


def _prepare_opened(
    im: Image.Image, fmt: str, manifest: ModelManifest, limits: DecodeLimits
) -> tuple[np.ndarray, int, int, str]:
    width, height = im.size
    if width < 1 or height < 1:
        raise PermanentError(f"not a valid {fmt} image: it has no pixels ({width}x{height})")
    max_pixels = _effective_max_pixels(limits)
    if width * height > max_pixels:
        raise PermanentError(
            f"image too large: {width}x{height} pixels exceeds the "
            f"{_megapixels(max_pixels)} limit"
        )
    orientation = _orientation(im)
    if orientation in (5, 6, 7, 8):
        width, height = height, width

    try:
        if fmt == "JPEG" and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
            req = _draft_request(im.size, manifest, swap=orientation in (5, 6, 7, 8))
            im.draft("RGB" if im.mode != "CMYK" else "CMYK", req)
        # Animated GIF/WebP/TIFF: Pillow starts on frame 0; nothing here seeks further.
        im.load()
        if orientation not in (None, 1):
            im = ImageOps.exif_transpose(im)
        rgb = _to_rgb(im)
        out = _resize(rgb, manifest)
    except PermanentError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PermanentError(f"image too large: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as e:
        msg = _reason(e)
        if "truncated" in msg or isinstance(e, EOFError):
            raise PermanentError(f"truncated image: the {fmt} data ends early ({msg})") from e
        raise PermanentError(f"cannot decode this {fmt} image: {msg}") from e
    arr = np.asarray(out, dtype=np.uint8)
    if arr.shape != (manifest.input_size[0], manifest.input_size[1], 3):  # pragma: no cover
        raise AssertionError(f"preprocessing produced {arr.shape}")
    return arr, width, height, fmt


def normalize_pixels(pixels: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    """uint8 HxWx3 -> float32 tensor in the manifest's layout and normalisation."""
    n = manifest.normalize
    std = np.asarray(n.std, dtype=np.float32)
    gain = np.float32(n.scale) / std
    offset = -np.asarray(n.mean, dtype=np.float32) / std
    x = pixels.astype(np.float32) * gain + offset
    if manifest.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


# ---- helpers ---------------------------------------------------------------------------


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text[:200]


def _effective_max_pixels(limits: DecodeLimits) -> int:
    """Our limit, capped by Pillow's: its DecompressionBombWarning is only an error while
    the import-time warnings filter survives (pytest, `catch_warnings` and
    `resetwarnings` drop it), so the cap must not depend on the warnings state."""
    pillow = Image.MAX_IMAGE_PIXELS
    return min(limits.max_pixels, pillow) if pillow else limits.max_pixels


def _bomb_message(
    data: bytes, fmt: str, limits: DecodeLimits, error: BaseException
) -> str:
    try:  # the format's plugin reads the header only; Pillow's size check is in `open`
        with Image.OPEN[fmt][0](io.BytesIO(data), "") as header:
            width, height = header.size
    except Exception:
        return f"image too large: {_reason(error)}"
    limit = _effective_max_pixels(limits)
    return (
        f"image too large: {width}x{height} pixels exceeds the {_megapixels(limit)} limit"
    )


def _megapixels(n: int) -> str:
    mp = n / 1_000_000
    return f"{mp:g} MP" if mp >= 1 else f"{n:,}-pixel"


def _orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(0x0112)
    except Exception:  # corrupt EXIF must not reject an otherwise good photo
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _draft_request(
    size: tuple[int, int], manifest: ModelManifest, swap: bool
) -> tuple[int, int]:
    """The smallest decode size (in stored orientation) that still covers the model's crop."""
    w, h = size
    th, tw = manifest.input_size
    if swap:  # the stored image is rotated relative to what the model will see
        th, tw = tw, th
    r = manifest.resize
    if r.method == "crop_then_resize":
        aspect = tw / th
        region_w = r.crop_fraction * min(w, h * aspect)
        scale = tw / max(region_w, 1e-9)
    elif r.method == "resize_then_crop":
        assert r.shorter_side is not None
        scale = r.shorter_side / min(w, h)
    else:
        scale = max(tw / w, th / h)
    scale = min(1.0, scale)
    return (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    # A tRNS colour key (PNG "RGB"/"L" with `transparency`) is transparency too: without
    # it, transparent areas would keep their key colour (often black) instead of white.
    keyed = "transparency" in im.info and mode in ("P", "L", "RGB")
    if mode == "RGB" and not keyed:
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_bit_depth_to_rgb(im)
    if keyed or mode in ("PA", "LA", "La", "RGBa"):
        mode = "RGBA"
        im = im.convert("RGBA")
    if mode in ("RGBA",):
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def _high_bit_depth_to_rgb(im: Image.Image) -> Image.Image:
    arr = np.asarray(im)
    if im.mode == "F":
        a = arr.astype(np.float32)
        finite = a[np.isfinite(a)]
        hi = float(finite.max()) if finite.size else 1.0
        full_scale = 1.0 if hi <= 1.0 else 255.0 if hi <= 255.0 else 65535.0
        a = np.nan_to_num(a, nan=0.0, posinf=full_scale, neginf=0.0)
    else:
        a = arr.astype(np.float32)
        hi = float(a.max()) if a.size else 0.0
        full_scale = 65535.0 if hi <= 65535 else float(np.iinfo(np.int32).max)
    scaled = np.clip(np.rint(a * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def _resize(im: Image.Image, manifest: ModelManifest) -> Image.Image:
    th, tw = manifest.input_size
    r = manifest.resize
    resample = _RESAMPLE[r.interpolation]
    w, h = im.size
    if r.method == "stretch":
        return im.resize((tw, th), resample)
    if r.method == "resize_then_crop":
        assert r.shorter_side is not None
        s = r.shorter_side / min(w, h)
        rw, rh = max(tw, round(w * s)), max(th, round(h * s))
        left, top = (rw - tw) // 2, (rh - th) // 2
        if rw * rh > 16 * tw * th:
            # Extreme aspect (1x100000 -> 256x25,600,000, ~20 GB): resize only the source
            # region that survives the crop. Same recipe, but Pillow's box resampling does
            # not reproduce resize-then-crop bit for bit, so ordinary images keep the path
            # below.
            sx, sy = w / rw, h / rh
            box = (left * sx, top * sy, (left + tw) * sx, (top + th) * sy)
            return im.resize((tw, th), resample, box=box)
        im = im.resize((rw, rh), resample)
        return im.crop((left, top, left + tw, top + th))
    # crop_then_resize: the centred region of the model's aspect, crop_fraction of it.
    crop_w, crop_h = _crop_size(w, h, tw / th, r.crop_fraction)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    return im.crop((left, top, left + crop_w, top + crop_h)).resize((tw, th), resample)


def _crop_size(w: int, h: int, aspect: float, fraction: float) -> tuple[int, int]:
    """The centred crop for `crop_then_resize`, in whole pixels, at least 1x1."""
    if w / h >= aspect:  # wider than the model: height limits
        ch = h * fraction
        cw = ch * aspect
    else:
        cw = w * fraction
        ch = cw / aspect
    return max(1, min(w, round(cw))), max(1, min(h, round(ch)))
