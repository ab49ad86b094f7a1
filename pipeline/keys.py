"""Pure key arithmetic: output keys, s3:// URIs, S3 event sequencers."""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "MAX_KEY_BYTES",
    "batch_output_key",
    "compare_sequencers",
    "output_key_for",
    "parse_s3_uri",
]

MAX_KEY_BYTES = 1024  # S3's limit on a key, counted in UTF-8 bytes

# Lenient on purpose: legacy us-east-1 buckets may hold capitals and underscores.
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_HEX = frozenset("0123456789ABCDEF")


def batch_output_key(model_id: str, output_prefix: str, moment: str, token: str) -> str:
    """The JSON Lines file of one invocation's results (IMGPIPE_OUTPUT_DOCUMENTS=batch):
    `<prefix><model>/_batches/<moment>-<token>.jsonl`, `moment` a compact UTC time so the
    files list in the order they were written."""
    return f"{output_prefix}{model_id}/_batches/{moment}-{token}.jsonl"


def output_key_for(input_key: str, model_id: str, output_prefix: str) -> str:
    """Where the JSON result of `input_key` under `model_id` lives.

    Deterministic, so a re-run overwrites the same object; the model id is a path
    segment, so two model versions never collide. Keys too long to keep readable fall
    back to `<prefix><model>/_long/<sha256 of the key>.json`.
    """
    if not input_key:
        raise ValueError("the input key is empty")
    if not model_id or "/" in model_id:
        raise ValueError(
            f"model id {model_id!r} must be non-empty and contain no '/' "
            "(it is one path segment of the output key)"
        )
    if not output_prefix.endswith("/"):
        raise ValueError(f"output prefix {output_prefix!r} must end with '/'")
    key = f"{output_prefix}{model_id}/{input_key}.json"
    if len(key.encode("utf-8")) <= MAX_KEY_BYTES:
        return key
    digest = hashlib.sha256(input_key.encode("utf-8")).hexdigest()
    key = f"{output_prefix}{model_id}/_long/{digest}.json"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(
            f"output prefix and model id are too long: even a hashed output key would "
            f"exceed S3's {MAX_KEY_BYTES}-byte limit"
        )
    return key


def parse_s3_uri(uri: str, *, require_key: bool = True) -> tuple[str, str]:
    """`s3://bucket/key` -> ("bucket", "key"). The key is taken literally (no URL decoding).

    With `require_key=False`, `s3://bucket` and `s3://bucket/prefix/` are accepted too
    (the key is then a prefix, possibly empty), as backfill needs.
    """
    if not isinstance(uri, str):
        raise ValueError(f"expected an s3:// URI as text, got {type(uri).__name__}")
    if uri[:5].lower() != "s3://":
        raise ValueError(f"{uri!r} is not an S3 URI: it must start with s3:// (s3://bucket/key)")
    rest = uri[5:]
    bucket, slash, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (expected s3://bucket/key)")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"{uri!r}: {bucket!r} is not a valid bucket name (3-255 letters, digits, "
            "'.', '-' or '_', starting and ending with a letter or digit)"
        )
    if require_key and not key:
        what = "an empty key" if slash else "no key"
        raise ValueError(f"{uri!r} has {what} (expected s3://{bucket}/key)")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"{uri!r}: the key is longer than S3's {MAX_KEY_BYTES}-byte limit")
    return bucket, key


def compare_sequencers(a: str | None, b: str | None) -> int | None:
    """Order two S3 event sequencers for the same key: -1, 0 or 1; None if unknown.

    AWS: sequencers are hex strings of varying length; right-pad the shorter with zeros,
    then compare lexicographically. Case is normalised (S3 notifications use upper-case,
    EventBridge examples lower-case). A missing, empty or non-hex sequencer cannot be
    ordered, so the answer is None rather than an exception in the write path.
    """
    if not a or not b:
        return None
    x, y = a.strip().upper(), b.strip().upper()
    if not x or not y or not set(x) <= _HEX or not set(y) <= _HEX:
        return None
    width = max(len(x), len(y))
    x, y = x.ljust(width, "0"), y.ljust(width, "0")
    return (x > y) - (x < y)
