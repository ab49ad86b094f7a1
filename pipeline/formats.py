"""What kind of file this is, from its first bytes and its header, before decoding.

The first of the decoder's checks (`pipeline.decode`): the format is named from its
signature and refused, with a sentence naming it, unless it is on the allow-list; the
header's own size is read without Pillow's size check, for the sentence about a file
whose header claims too many pixels.
"""

from __future__ import annotations

import io

from PIL import Image

from pipeline.errors import PermanentError, UnsupportedFormatError

__all__ = ["ALLOWED_FORMATS", "header_size", "sniff_format"]

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ALLOWED_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"

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


def sniff_format(head: bytes) -> str:
    """Name the format of data starting with `head`, or raise `PermanentError`.

    Returns one of `ALLOWED_FORMATS` when the data looks like an allowed image.
    """
    for prefix, offset, name in _SIGNATURES:
        if head[offset:offset + len(prefix)] == prefix:
            if name in ALLOWED_FORMATS:
                return name
            raise UnsupportedFormatError(
                f"unsupported format: {name} files are not accepted; send {_ALLOWED_TEXT}"
            )
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] == b"RIFF":
        raise UnsupportedFormatError(
            f"unsupported format: RIFF {head[8:12].decode('latin-1')!r} data (audio or "
            f"video?) is not accepted; send {_ALLOWED_TEXT}"
        )
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("latin-1", "replace").strip()
        kind = "HEIF/AVIF image" if brand in ("heic", "heix", "mif1", "avif") else "video"
        raise UnsupportedFormatError(
            f"unsupported format: {kind} (ISO media, brand {brand!r}) is not accepted; "
            f"send {_ALLOWED_TEXT}"
        )
    stripped = head.lstrip()
    if stripped[:1] == b"<":
        what = "an SVG drawing" if b"<svg" in head.lower() else "XML or HTML text"
        raise UnsupportedFormatError(
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


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the header, without Pillow's own size check."""
    if fmt == "WEBP":  # Pillow's WebP plugin decodes in `open`; read the RIFF header
        return _webp_size(data)
    try:  # the format's plugin reads the header only; Pillow's size check is in `open`
        with Image.OPEN[fmt][0](io.BytesIO(data), "") as header:
            return header.size
    except Exception:
        return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size of a WebP file: VP8X (extended), VP8L (lossless) or VP8 (lossy)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w = int.from_bytes(data[26:28], "little") & 0x3FFF
        h = int.from_bytes(data[28:30], "little") & 0x3FFF
        return w, h
    return None
