"""Image bytes -> model input, fast and safely.

Decoding is where real photos spend their time and where hostile files do their harm, so
this module does three things in order:

1. *Refuse early.* The format is sniffed from the first bytes and checked against an
   allow-list (`pipeline.formats`) before Pillow picks a decoder (EPS would start
   Ghostscript); Pillow is then restricted to the same formats. The header's dimensions
   are checked against a pixel limit before any pixel is allocated, so a 20000x20000
   "bomb" in a 100-byte file costs nothing.
2. *Decode no more than needed.* JPEGs are decoded with DCT scaling (`Image.draft`) to the
   smallest power-of-two reduction that still covers the model's crop: a 12 MP photo is
   decoded at 1/8 scale, ~4x faster than a full decode.
3. *Normalise everything to RGB.* EXIF orientation, CMYK, palettes with transparency,
   LA/RGBA (composited on white), 1-bit and 16-bit (scaled, not clipped), first frame of
   animations.

Every refusal is a `PermanentError` whose message a person understands.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import (
    PermanentError,
    TooLargeError,
    too_large_message,
)
from pipeline.formats import ALLOWED_FORMATS, header_size, sniff_format
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

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


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
        raise TooLargeError(too_large_message(len(data), limits.max_bytes))
    fmt = sniff_format(bytes(data[:64]))
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own check fired at open (its limit is above ours): say the same sentence
        # ours would, with the header's size, rather than Pillow's DOS-attack wording.
        raise TooLargeError(_bomb_message(data, fmt, limits, e)) from e
    except Exception as e:  # Pillow raises many types for garbage headers
        if _text_chunk_bomb(e):
            raise PermanentError(_TEXT_BOMB) from e
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
        raise TooLargeError(
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
        if im.size[0] * im.size[1] > STRIP_THRESHOLD_PIXELS:
            # Read again: Pillow turns some formats upright while loading (libtiff).
            out = _reduce_then_resize(im, manifest, _orientation(im))
        else:
            if orientation not in (None, 1):
                im = ImageOps.exif_transpose(im)
            out = _resize(_to_rgb(im), manifest)
    except PermanentError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise TooLargeError(f"image too large: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as e:
        if _text_chunk_bomb(e):
            raise PermanentError(_TEXT_BOMB) from e
        msg = _reason(e)
        if "truncated" in msg or isinstance(e, EOFError):
            raise PermanentError(f"truncated image: the {fmt} data ends early ({msg})") from e
        raise PermanentError(f"cannot decode this {fmt} image: {msg}") from e
    arr = np.asarray(out, dtype=np.uint8)
    if arr.shape != (manifest.input_size[0], manifest.input_size[1], 3):  # pragma: no cover
        raise AssertionError(f"preprocessing produced {arr.shape}")
    return arr, width, height, fmt


def normalize_pixels(pixels: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    """uint8 HxWx3 -> float32 tensor in the manifest's layout and normalisation.

    A lookup in a table of the 256 values per channel: the same float32 arithmetic as
    `pixels * gain + offset` (so the same bits), done 768 times instead of once a pixel."""
    n = manifest.normalize
    table = _normalize_table(float(n.scale), tuple(n.mean), tuple(n.std))
    if manifest.layout == "NCHW":
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        for c in range(3):
            np.take(table[c], pixels[:, :, c], out=out[c], mode="clip")
        return out
    return np.ascontiguousarray(table.T[pixels, np.arange(3)], dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _normalize_table(scale: float, mean: tuple[float, ...], std: tuple[float, ...]
                     ) -> np.ndarray:
    """3 x 256 float32: channel c's value v normalised, as `normalize_pixels` defines."""
    std32 = np.asarray(std, dtype=np.float32)
    gain = np.float32(scale) / std32
    offset = -np.asarray(mean, dtype=np.float32) / std32
    values = np.arange(256, dtype=np.float32)[:, None]
    return np.ascontiguousarray((values * gain + offset).T)


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


_TEXT_BOMB = (
    "PNG metadata too large: a compressed text chunk expands beyond the size imgpipe "
    "accepts (a decompression bomb)"
)


def _text_chunk_bomb(e: BaseException) -> bool:
    """Pillow's refusal of a zTXt/iTXt chunk that inflates too far (its text names its
    own constants, which mean nothing to the person who sent the file)."""
    return isinstance(e, ValueError) and "MAX_TEXT_" in str(e)


def _bomb_message(
    data: bytes, fmt: str, limits: DecodeLimits, error: BaseException
) -> str:
    size = header_size(data, fmt)
    limit = _megapixels(_effective_max_pixels(limits))
    if size is None:
        return f"image too large: its header claims more pixels than the {limit} limit"
    return f"image too large: {size[0]}x{size[1]} pixels exceeds the {limit} limit"


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
    if mode in _HIGH_BIT_DEPTH:
        return _high_bit_depth_to_rgb(im)
    if keyed or mode in ("PA", "LA", "La", "RGBa"):
        mode = "RGBA"
        im = im.convert("RGBA")
    if mode in ("RGBA",):
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


_HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _high_bit_depth_to_rgb(im: Image.Image, full_scale: float | None = None) -> Image.Image:
    """Scale 16/32-bit and float samples to 8 bits (the value that means white becomes 255).

    `full_scale` is that value; None: decide it from this image's own largest sample.
    """
    a = np.asarray(im).astype(np.float32)
    if full_scale is None:
        full_scale = _full_scale(im.mode, _largest_sample(a, im.mode))
    if im.mode == "F":
        a = np.nan_to_num(a, nan=0.0, posinf=full_scale, neginf=0.0)
    scaled = np.clip(np.rint(a * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def _largest_sample(a: np.ndarray, mode: str) -> float | None:
    if mode == "F":
        a = a[np.isfinite(a)]
    return float(a.max()) if a.size else None


def _full_scale(mode: str, hi: float | None) -> float:
    if mode == "F":
        hi = 1.0 if hi is None else hi
        return 1.0 if hi <= 1.0 else 255.0 if hi <= 255.0 else 65535.0
    return 65535.0 if (hi or 0.0) <= 65535 else float(np.iinfo(np.int32).max)


# ---- large images: reduce strip by strip before anything else -------------------------
#
# A 40 MP image is ~160 MB once decoded. Converting its mode (16-bit or float to 8-bit,
# alpha onto white, palette or CMYK to RGB), cropping it, or looking at it as a float array
# would each add a full-size copy, several times over. Above this size the region the model
# will see is cut into strips of a few MB; each strip is converted to 8-bit RGB and reduced
# by a whole factor (box average) that keeps at least twice the model's resolution, and only
# that small image is resampled with the manifest's filter. Peak memory: the decoded image
# plus a few strips.

STRIP_THRESHOLD_PIXELS = 4_000_000
_STRIP_BYTES = 8 * 1024 * 1024
_REDUCING_GAP = 2  # keep at least this many source pixels per model pixel before resampling

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


def _reduce_then_resize(
    im: Image.Image, manifest: ModelManifest, orientation: int | None
) -> Image.Image:
    """The model's input from a large decoded image, without a full-size copy.

    Works in the stored orientation (the model's size swapped when EXIF rotates by 90
    degrees) and turns only the final, model-sized image upright.
    """
    th, tw = manifest.input_size
    turn = _TRANSPOSE.get(orientation or 1)
    if orientation in (5, 6, 7, 8):
        th, tw = tw, th
    w, h = im.size
    x0, y0, x1, y1 = _source_box(w, h, tw, th, manifest)
    ibox = (math.floor(x0), math.floor(y0), min(w, math.ceil(x1)), min(h, math.ceil(y1)))
    factor = max(1, int(min((ibox[2] - ibox[0]) / tw, (ibox[3] - ibox[1]) / th)
                        // _REDUCING_GAP))
    full_scale = _strip_full_scale(im) if im.mode in _HIGH_BIT_DEPTH else None
    small = _reduce_region(im, ibox, factor, full_scale)
    box = ((x0 - ibox[0]) / factor, (y0 - ibox[1]) / factor,
           (x1 - ibox[0]) / factor, (y1 - ibox[1]) / factor)
    out = small.resize((tw, th), _RESAMPLE[manifest.resize.interpolation], box=box)
    return out.transpose(turn) if turn is not None else out


def _source_box(
    w: int, h: int, tw: int, th: int, manifest: ModelManifest
) -> tuple[float, float, float, float]:
    """The part of a w x h image that the manifest's recipe maps onto tw x th."""
    r = manifest.resize
    if r.method == "stretch":
        return 0.0, 0.0, float(w), float(h)
    if r.method == "resize_then_crop":
        assert r.shorter_side is not None
        s = r.shorter_side / min(w, h)
        rw, rh = max(tw, round(w * s)), max(th, round(h * s))
        left, top = (rw - tw) // 2, (rh - th) // 2
        sx, sy = w / rw, h / rh
        return left * sx, top * sy, (left + tw) * sx, (top + th) * sy
    crop_w, crop_h = _crop_size(w, h, tw / th, r.crop_fraction)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    return float(left), float(top), float(left + crop_w), float(top + crop_h)


def _strip_rows(width: int, factor: int = 1) -> int:
    """Rows per strip: a few MB of source (at most 8 bytes a pixel), a multiple of factor."""
    rows = max(1, _STRIP_BYTES // (8 * max(1, width)))
    return max(factor, rows // factor * factor)


def _strip_full_scale(im: Image.Image) -> float:
    """`_full_scale` of the whole image, looking at one strip at a time."""
    w, h = im.size
    rows = _strip_rows(w)
    hi: float | None = None
    for y in range(0, h, rows):
        with im.crop((0, y, w, min(h, y + rows))) as strip:
            m = _largest_sample(np.asarray(strip), im.mode)
        if m is not None:
            hi = m if hi is None else max(hi, m)
    return _full_scale(im.mode, hi)


def _reduce_region(
    im: Image.Image, box: tuple[int, int, int, int], factor: int, full_scale: float | None
) -> Image.Image:
    """`box` of `im` as 8-bit RGB, reduced `factor` times, converted one strip at a time."""
    x0, y0, x1, y1 = box
    out = Image.new("RGB", (-(-(x1 - x0) // factor), -(-(y1 - y0) // factor)))
    rows = _strip_rows(x1 - x0, factor)
    for y in range(y0, y1, rows):
        with im.crop((x0, y, x1, min(y1, y + rows))) as strip:
            if full_scale is not None:
                rgb = _high_bit_depth_to_rgb(strip, full_scale)
            else:
                rgb = _to_rgb(strip)
            out.paste(rgb.reduce(factor) if factor > 1 else rgb, (0, (y - y0) // factor))
    return out


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
