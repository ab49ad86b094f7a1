from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import PermanentError
from pipeline.events import ObjectRef, ParsedMessage, parse_message_body
from tests.conftest import load_event, load_event_text

FOLDER = "folder marker (zero-byte key ending in /)"


def parse_fixture(name: str) -> ParsedMessage:
    return parse_message_body(load_event_text(name))


def s3_body(key: str, size: int = 10, event_name: str = "ObjectCreated:Put") -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": event_name,
                    "eventTime": "2026-11-22T01:02:03.456Z",
                    "s3": {
                        "bucket": {"name": "b"},
                        "object": {"key": key, "size": size, "eTag": "e", "sequencer": "0A"},
                    },
                }
            ]
        }
    )


# ---- S3 notifications ------------------------------------------------------------------


def test_single_put_becomes_one_ref_with_all_metadata() -> None:
    parsed = parse_fixture("s3_put_single")
    assert parsed.skipped == ()
    assert parsed.refs == (
        ObjectRef(
            bucket="imgpipe-local",
            key="incoming/cat.jpg",
            etag="d41d8cd98f00b204e9800998ecf8427e",
            size=48213,
            version_id="3sL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY",
            sequencer="0055AED6DCD90281E5",
            event_time="2026-11-22T01:02:03.456Z",
        ),
    )
    assert parsed.refs[0].uri == "s3://imgpipe-local/incoming/cat.jpg"


def test_every_record_of_a_message_is_kept_in_order() -> None:
    parsed = parse_fixture("s3_put_multi")
    assert [r.key for r in parsed.refs] == [
        "incoming/dog.jpg",
        "incoming/holiday/beach.png",
        "incoming/copy-of-cat.jpg",
    ]
    assert parsed.refs[1].etag == "9f8e7d6c5b4a39281706f5e4d3c2b1a0-2"  # multipart ETag
    assert parsed.skipped == ()


def test_keys_are_url_decoded_like_s3_encodes_them() -> None:
    parsed = parse_fixture("s3_put_special_keys")
    assert [r.key for r in parsed.refs] == [
        "incoming/red flower.jpg",
        "incoming/c++/a+b=c.jpg",
        "incoming/100% real.jpg",
        "incoming/été/日本語の写真 🐱.JPG",
        "incoming/a/b/c/d/e/f/g/deep.jpeg",  # moto encodes '/' as %2F
        "incoming/semi;colon:and?query&amp#hash.png",
    ]


def test_test_event_is_skipped_not_an_error() -> None:
    parsed = parse_fixture("s3_test_event")
    assert parsed.refs == ()
    assert parsed.skipped == (("s3://imgpipe-local", "test event"),)


def test_test_event_without_bucket_still_skipped() -> None:
    parsed = parse_message_body(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
    assert parsed.refs == ()
    assert [reason for _, reason in parsed.skipped] == ["test event"]


def test_zero_byte_folder_marker_is_skipped() -> None:
    parsed = parse_fixture("s3_folder_marker")
    assert parsed.refs == ()
    assert parsed.skipped == (("s3://imgpipe-local/incoming/photos/", FOLDER),)


def test_non_empty_key_ending_in_slash_is_not_a_folder_marker() -> None:
    (ref,) = parse_message_body(s3_body("odd/", size=12)).refs
    assert ref.key == "odd/"


def test_zero_byte_file_is_kept_so_it_can_be_rejected() -> None:
    (ref,) = parse_message_body(s3_body("incoming/empty.jpg", size=0)).refs
    assert ref.size == 0


def test_object_removed_is_skipped_with_reason() -> None:
    parsed = parse_fixture("s3_object_removed")
    assert parsed.refs == ()
    ((what, reason),) = parsed.skipped
    assert what == "s3://imgpipe-local/incoming/cat.jpg"
    assert "ObjectRemoved:Delete" in reason


def test_event_name_with_s3_prefix_is_accepted() -> None:
    (ref,) = parse_message_body(s3_body("k.jpg", event_name="s3:ObjectCreated:Put")).refs
    assert ref.key == "k.jpg"


def test_mixed_message_keeps_created_and_skips_the_rest() -> None:
    doc = json.loads(s3_body("a.jpg"))
    removed = json.loads(s3_body("b.jpg", event_name="ObjectRemoved:Delete"))["Records"][0]
    doc["Records"].append(removed)
    doc["Records"].append({"eventSource": "aws:sqs", "body": "x"})
    parsed = parse_message_body(json.dumps(doc))
    assert [r.key for r in parsed.refs] == ["a.jpg"]
    assert [what for what, _ in parsed.skipped] == ["s3://b/b.jpg", "record 2"]


def test_quoted_etag_and_string_size_are_normalised() -> None:
    doc = json.loads(s3_body("a.jpg"))
    doc["Records"][0]["s3"]["object"].update({"eTag": '"abc"', "size": "42", "versionId": ""})
    (ref,) = parse_message_body(json.dumps(doc)).refs
    assert (ref.etag, ref.size, ref.version_id) == ("abc", 42, None)


# ---- EventBridge and SNS ---------------------------------------------------------------


def test_eventbridge_object_created_is_decoded() -> None:
    parsed = parse_fixture("eventbridge_object_created")
    assert parsed.refs == (
        ObjectRef(
            bucket="imgpipe-local",
            key="incoming/summer 2026/IMG_0001.jpg",
            etag="b1946ac92492d2347c6235b4d2611184",
            size=5,
            version_id="IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
            sequencer="617f08299329d189",
            event_time="2026-11-22T01:02:03Z",
        ),
    )


def test_eventbridge_other_detail_types_are_skipped() -> None:
    parsed = parse_fixture("eventbridge_object_deleted")
    assert parsed.refs == ()
    ((what, reason),) = parsed.skipped
    assert what == "s3://imgpipe-local/incoming/cat.jpg"
    assert "Object Deleted" in reason


def test_eventbridge_etag_is_read_in_aws_spelling_only() -> None:
    """`etag`, as S3 sends it to EventBridge; moto's `eTag` is mended in the emulator
    (pipeline/local/s3_events.py), not accepted here."""
    doc = load_event("eventbridge_object_created")
    (ref,) = parse_message_body(json.dumps(doc)).refs
    assert ref.etag == "b1946ac92492d2347c6235b4d2611184"
    obj = doc["detail"]["object"]
    obj["eTag"] = obj.pop("etag")
    (ref,) = parse_message_body(json.dumps(doc)).refs
    assert ref.etag is None  # read from the object itself (`_with_object_facts`)


def test_eventbridge_folder_marker_is_skipped() -> None:
    doc = load_event("eventbridge_object_created")
    doc["detail"]["object"].update({"key": "incoming/photos/", "size": 0})
    parsed = parse_message_body(json.dumps(doc))
    assert parsed.refs == ()
    assert parsed.skipped == (("s3://imgpipe-local/incoming/photos/", FOLDER),)


def test_sns_envelope_is_unwrapped() -> None:
    assert parse_fixture("sns_s3_put") == parse_fixture("s3_put_single")


def test_sns_envelope_around_a_test_event() -> None:
    body = json.dumps({"Type": "Notification", "Message": load_event_text("s3_test_event")})
    assert parse_message_body(body).skipped == (("s3://imgpipe-local", "test event"),)


def test_sqs_batch_fixture_bodies_parse() -> None:
    batch = load_event("sqs_batch_s3_put")
    messages = batch["Records"]
    assert len(messages) == 3
    assert all(m["eventSource"] == "aws:sqs" for m in messages)
    parsed = [parse_message_body(m["body"]) for m in messages]
    assert [len(p.refs) for p in parsed] == [1, 2, 1]
    assert parsed[1].refs[1].key == "incoming/holiday/beach photo.jpg"
    assert len({m["messageId"] for m in messages}) == 3


# ---- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("", "not JSON"),
        ("hello, world", "not JSON"),
        ("[1, 2]", "not an object"),
        ("42", "not an object"),
        ('{"foo": 1}', "neither an S3 event notification"),
        ('{"Records": []}', "Records"),
        ('{"Records": "nope"}', "Records"),
        ('{"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}', "none of them is an S3"),
        ('{"Type": "Notification", "Message": "not json"}', "SNS notification"),
        ('{"Type": "Notification", "Message": 7}', "SNS notification"),
        ('{"source": "aws.s3", "detail-type": "Object Created"}', "detail"),
    ],
)
def test_unparseable_bodies_raise_permanent_error(body: str, words: str) -> None:
    with pytest.raises(PermanentError, match=words):
        parse_message_body(body)


def test_record_without_key_or_bucket_is_permanent() -> None:
    doc: dict[str, Any] = json.loads(s3_body("a.jpg"))
    del doc["Records"][0]["s3"]["object"]["key"]
    with pytest.raises(PermanentError, match="object.key"):
        parse_message_body(json.dumps(doc))
    doc = json.loads(s3_body("a.jpg"))
    doc["Records"][0]["s3"]["bucket"] = {}
    with pytest.raises(PermanentError, match="bucket"):
        parse_message_body(json.dumps(doc))


def test_bad_size_is_permanent() -> None:
    doc = json.loads(s3_body("a.jpg"))
    doc["Records"][0]["s3"]["object"]["size"] = "big"
    with pytest.raises(PermanentError, match="not a whole number"):
        parse_message_body(json.dumps(doc))


def test_error_message_quotes_a_short_preview() -> None:
    with pytest.raises(PermanentError) as info:
        parse_message_body("x" * 10_000)
    assert len(str(info.value)) < 300


# ---- properties ------------------------------------------------------------------------

keys = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=200
).filter(lambda k: len(k.encode("utf-8")) <= 1024)


@given(key=keys, encode_slash=st.booleans())
def test_any_quote_plus_encoded_key_round_trips(key: str, encode_slash: bool) -> None:
    encoded = quote_plus(key, safe="" if encode_slash else "/")
    (ref,) = parse_message_body(s3_body(encoded, size=1)).refs
    assert ref.key == key
    assert ref.uri == f"s3://b/{key}"


@given(key=keys)
def test_any_key_round_trips_through_eventbridge_and_sns(key: str) -> None:
    doc = load_event("eventbridge_object_created")
    doc["detail"]["object"]["key"] = quote_plus(key, safe="/")
    body = json.dumps({"Type": "Notification", "Message": json.dumps(doc)})
    (ref,) = parse_message_body(body).refs
    assert ref.key == key


@given(text=st.text(max_size=50))
def test_arbitrary_text_either_parses_or_raises_permanent(text: str) -> None:
    try:
        result = parse_message_body(text)
    except PermanentError:
        return
    assert isinstance(result, ParsedMessage)


# ---- bodies that break a reader ----------------------------------------------------------

HUGE = "9" * 5_000  # past Python's 4,300-digit limit for reading an integer


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('{"Records":' + "[" * 50_000, "nested too deeply"),
        ('{"Records": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply"),
        ('{"s3": ' + HUGE + "}", "cannot be read"),
        (json.dumps({"Type": "Notification", "Message": "[" * 50_000}), "nested too deeply"),
        (s3_body("a.jpg").replace('"size": 10', f'"size": "{HUGE}"'), "not a whole number"),
        (s3_body("a.jpg").replace('"size": 10', '"size": 1e400'), "not a whole number"),
    ],
    ids=["deep-open", "deep-closed", "huge-int", "deep-in-sns", "huge-size-text", "inf-size"],
)
def test_a_body_that_breaks_the_reader_is_that_bodys_permanent_error(
        body: str, words: str) -> None:
    with pytest.raises(PermanentError, match=words) as info:
        parse_message_body(body)
    assert len(str(info.value)) < 400


def test_any_surprise_while_reading_a_body_is_a_permanent_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.events

    def explode(*args: Any) -> Any:
        raise MemoryError("no room")

    monkeypatch.setattr(pipeline.events, "_parse_document", explode)
    with pytest.raises(PermanentError, match=r"could not be read as an S3 event \(MemoryError: "
                                             r"no room; it starts with"):
        parse_message_body(s3_body("a.jpg"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["Records", "s3", "bucket", "object", "name", "key", "size", "eTag",
                         "eventName", "eventTime", "Type", "Message", "source",
                         "detail-type", "detail"]), inner, max_size=4),
    max_leaves=20,
)


@given(doc=json_values)
def test_any_json_either_parses_or_raises_permanent(doc: Any) -> None:
    try:
        result = parse_message_body(json.dumps(doc))
    except PermanentError:
        return
    assert isinstance(result, ParsedMessage)
