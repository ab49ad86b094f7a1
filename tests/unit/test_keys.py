from __future__ import annotations

import functools
import hashlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipeline.keys import MAX_KEY_BYTES, compare_sequencers, output_key_for, parse_s3_uri

PREFIX = "predictions/"
MODEL = "efficientnet-lite0@1"

# ---- output_key_for --------------------------------------------------------------------


def test_output_key_mirrors_the_input_key_under_the_model() -> None:
    assert (
        output_key_for("incoming/holiday/beach photo.jpg", MODEL, PREFIX)
        == "predictions/efficientnet-lite0@1/incoming/holiday/beach photo.jpg.json"
    )


def test_two_model_versions_never_share_an_output_key() -> None:
    a = output_key_for("incoming/cat.jpg", "m@1", PREFIX)
    b = output_key_for("incoming/cat.jpg", "m@2", PREFIX)
    assert a != b


def test_long_keys_fall_back_to_a_hash() -> None:
    key = "incoming/" + "x" * 1010
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert output_key_for(key, MODEL, PREFIX) == f"predictions/{MODEL}/_long/{digest}.json"


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    prefix_len = len(f"{PREFIX}{MODEL}/".encode()) + len(".json")
    room = MAX_KEY_BYTES - prefix_len
    fits = "é" * (room // 2)  # two bytes each
    assert output_key_for(fits, MODEL, PREFIX).endswith(fits + ".json")
    too_long = "é" * (room // 2 + 1)
    assert "/_long/" in output_key_for(too_long, MODEL, PREFIX)


def test_exactly_at_the_limit_is_kept() -> None:
    prefix_len = len(f"{PREFIX}{MODEL}/".encode()) + len(".json")
    key = "k" * (MAX_KEY_BYTES - prefix_len)
    out = output_key_for(key, MODEL, PREFIX)
    assert len(out.encode()) == MAX_KEY_BYTES
    assert "/_long/" not in out
    assert "/_long/" in output_key_for(key + "k", MODEL, PREFIX)


@pytest.mark.parametrize(
    ("key", "model", "prefix"),
    [
        ("", MODEL, PREFIX),
        ("a.jpg", "", PREFIX),
        ("a.jpg", "org/model@1", PREFIX),  # would collide with another model's keys
        ("a.jpg", MODEL, "predictions"),
        ("a.jpg", MODEL, ""),
        ("a.jpg", MODEL, "p" * 1000 + "/"),
    ],
)
def test_output_key_rejects_bad_arguments(key: str, model: str, prefix: str) -> None:
    with pytest.raises(ValueError):
        output_key_for(key, model, prefix)


input_keys = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=600
).filter(lambda k: len(k.encode("utf-8")) <= MAX_KEY_BYTES)
model_ids = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,30}@[0-9]{1,4}", fullmatch=True)
prefixes = st.from_regex(r"[a-z][a-z0-9_-]{0,20}/([a-z0-9]{1,10}/)?", fullmatch=True)


@given(key=input_keys, model=model_ids, prefix=prefixes)
def test_output_keys_are_deterministic_bounded_and_under_the_prefix(
    key: str, model: str, prefix: str
) -> None:
    out = output_key_for(key, model, prefix)
    assert out == output_key_for(key, model, prefix)
    assert out.startswith(f"{prefix}{model}/")
    assert out.endswith(".json")
    assert len(out.encode("utf-8")) <= MAX_KEY_BYTES


@given(key=input_keys, a=model_ids, b=model_ids, prefix=prefixes)
def test_output_keys_are_distinct_per_model(key: str, a: str, b: str, prefix: str) -> None:
    assume(a != b)
    assert output_key_for(key, a, prefix) != output_key_for(key, b, prefix)


@given(a=input_keys, b=input_keys, model=model_ids)
def test_distinct_inputs_get_distinct_outputs(a: str, b: str, model: str) -> None:
    assume(a != b)
    assert output_key_for(a, model, PREFIX) != output_key_for(b, model, PREFIX)


# ---- parse_s3_uri ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://imgpipe-local/incoming/cat.jpg", ("imgpipe-local", "incoming/cat.jpg")),
        ("s3://b.with.dots/a b+c%20d.jpg", ("b.with.dots", "a b+c%20d.jpg")),  # literal key
        ("s3://bkt/dir/", ("bkt", "dir/")),
        ("s3://bkt//double", ("bkt", "/double")),
        ("S3://bkt/x", ("bkt", "x")),
        ("s3://bkt/été/写真.jpg", ("bkt", "été/写真.jpg")),
    ],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("", "must start with s3://"),
        ("imgpipe-local/cat.jpg", "must start with s3://"),
        ("https://bkt.s3.amazonaws.com/x", "must start with s3://"),
        ("s3://", "names no bucket"),
        ("s3:///key", "names no bucket"),
        ("s3://bkt", "no key"),
        ("s3://bkt/", "an empty key"),
        ("s3://b/key", "not a valid bucket name"),
        ("s3://-bad/key", "not a valid bucket name"),
        ("s3://has space/key", "not a valid bucket name"),
        ("s3://a..b/key", "not a valid bucket name"),
        ("s3://bkt/" + "k" * 1025, "1024-byte limit"),
    ],
)
def test_parse_s3_uri_rejects_bad_input(uri: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_s3_uri(uri)


def test_parse_s3_uri_can_accept_a_bare_bucket_or_prefix() -> None:
    assert parse_s3_uri("s3://bkt", require_key=False) == ("bkt", "")
    assert parse_s3_uri("s3://bkt/", require_key=False) == ("bkt", "")
    assert parse_s3_uri("s3://bkt/incoming/", require_key=False) == ("bkt", "incoming/")


@given(bucket=st.from_regex(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", fullmatch=True), key=input_keys)
def test_parse_s3_uri_inverts_formatting(bucket: str, key: str) -> None:
    assert parse_s3_uri(f"s3://{bucket}/{key}") == (bucket, key)


# ---- compare_sequencers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("0055AED6DCD90281E5", "0055AED6DCD90281E5", 0),
        ("0055AED6DCD90281E5", "0055AED6DCD90281E6", -1),
        ("0055AED6DCD90281E6", "0055AED6DCD90281E5", 1),
        # Different lengths: right-pad, then compare. Numerically 0x1 < 0xFF, but as
        # sequencers "1" means "10" which is after "0F".
        ("1", "0F", 1),
        ("0A", "0A00", 0),
        ("0A", "0A01", -1),
        ("617f08299329d189", "617F08299329D189", 0),  # case does not matter
        ("617f08299329d189", "617f0837b476e463", -1),
    ],
)
def test_compare_sequencers(a: str, b: str, expected: int) -> None:
    assert compare_sequencers(a, b) == expected


@pytest.mark.parametrize(
    ("a", "b"), [(None, "0A"), ("0A", None), (None, None), ("", "0A"), ("0A", "xyz")]
)
def test_unknown_sequencers_cannot_be_ordered(a: str | None, b: str | None) -> None:
    assert compare_sequencers(a, b) is None


hex_strings = st.text(alphabet="0123456789ABCDEFabcdef", min_size=1, max_size=24)


def padded_value(s: str, width: int = 32) -> int:
    return int(s.upper().ljust(width, "0"), 16)


@given(a=hex_strings, b=hex_strings)
def test_comparison_matches_right_padded_numeric_order(a: str, b: str) -> None:
    x, y = padded_value(a), padded_value(b)
    assert compare_sequencers(a, b) == (x > y) - (x < y)


@given(a=hex_strings, b=hex_strings)
def test_comparison_is_antisymmetric(a: str, b: str) -> None:
    ab, ba = compare_sequencers(a, b), compare_sequencers(b, a)
    assert ab is not None and ba is not None
    assert ab == -ba


@given(a=hex_strings, b=hex_strings, c=hex_strings)
def test_comparison_is_transitive(a: str, b: str, c: str) -> None:
    if compare_sequencers(a, b) in (-1, 0) and compare_sequencers(b, c) in (-1, 0):
        assert compare_sequencers(a, c) in (-1, 0)


@given(a=hex_strings, zeros=st.integers(min_value=0, max_value=10))
def test_trailing_zeros_do_not_change_the_order(a: str, zeros: int) -> None:
    assert compare_sequencers(a, a + "0" * zeros) == 0


@given(items=st.lists(hex_strings, min_size=2, max_size=20))
def test_sorting_by_comparison_agrees_with_padded_sort(items: list[str]) -> None:
    def cmp(x: str, y: str) -> int:
        result = compare_sequencers(x, y)
        assert result is not None
        return result

    by_cmp = sorted(items, key=functools.cmp_to_key(cmp))
    assert [padded_value(s) for s in by_cmp] == sorted(padded_value(s) for s in items)
