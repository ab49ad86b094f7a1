"""The kind of each refusal, which the HTTP API turns into its status code: too large
(413), a format not accepted (415), anything else not a usable image (400)."""

from __future__ import annotations

import pytest

from pipeline.decode import DecodeLimits, decode_image
from pipeline.errors import PermanentError, TooLargeError, UnsupportedFormatError
from pipeline.manifest import ModelManifest
from tests.unit.test_decode import png_header_only


@pytest.mark.parametrize(("data", "kind"), [
    (b"%PDF-1.7\n", UnsupportedFormatError),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", UnsupportedFormatError),
    (b"\x00\x00\x00\x18ftypheic" + b"\0" * 16, UnsupportedFormatError),
    (png_header_only(20000, 20000), TooLargeError),
    (b"just some words\n", PermanentError),
    (b"", PermanentError),
], ids=["pdf", "svg", "heic", "bomb", "text", "empty"])
def test_each_refusal_says_what_kind_it_is(
        data: bytes, kind: type[PermanentError], default_manifest: ModelManifest) -> None:
    with pytest.raises(PermanentError) as refused:
        decode_image(data, default_manifest)
    assert type(refused.value) is kind


def test_a_file_over_the_byte_limit_is_too_large(default_manifest: ModelManifest) -> None:
    with pytest.raises(TooLargeError, match="exceeds the 10-byte limit"):
        decode_image(b"\xff\xd8\xff" + b"\0" * 20, default_manifest,
                     DecodeLimits(max_bytes=10))
