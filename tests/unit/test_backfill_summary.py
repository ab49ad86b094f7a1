"""The summary reads a ResultWriter output in AWS's documented format
(tests/events/result_writer/, copied from the Step Functions guide), streamed: files are
read in chunks, never whole."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

import pipeline.backfill
from pipeline.backfill import iter_json_values, summarize
from tests.conftest import event_path

MANIFEST = "predictions/_backfill/ad9b5f27-090b-3ac6-9beb-243cd77144a7/manifest.json"


class ChunkedS3:
    """get_object answers the fixture files; records the largest single read."""

    def __init__(self) -> None:
        self.largest_read = 0

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        data = event_path(f"result_writer/{Key.rsplit('/', 1)[1]}").read_bytes()
        outer = self

        class Body(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                chunk = super().read(size)
                outer.largest_read = max(outer.largest_read, len(chunk))
                return chunk

        return {"Body": Body(data)}


def test_the_documented_result_files_add_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.backfill, "READ_CHUNK_BYTES", 97)  # many cut entries
    s3 = ChunkedS3()
    summary = summarize({"MapRunArn": "arn:x", "ResultWriterDetails": {
        "Bucket": "imgpipe-local", "Key": MANIFEST}}, s3, {"bucket": "imgpipe-local"})
    assert summary["counts"] == {"classified": 2, "skipped": 1, "rejected": 1, "gone": 0,
                                 "superseded": 0, "failed": 3, "ignored": 1}
    assert summary["failed_batches"] == 1 and summary["models"] == ["efficientnet-lite0@1"]
    (failure,) = summary["failures"]
    assert failure["error"] == "BackfillIncomplete"
    assert failure["cause"].startswith("BackfillIncomplete: 3 of 3 object(s)")
    assert failure["first_key"] == "old/e.jpg"
    assert s3.largest_read <= 97


@pytest.mark.parametrize("size", [1, 2, 5, 64, 4096])
def test_values_cut_anywhere_decode_the_same(size: int) -> None:
    values = [{"a": "é" * 40, "n": [1, 2.5, None, True]}, 12345, "text", [], {}]
    for text in (json.dumps(values), "\n".join(json.dumps(v) for v in values) + "\n"):
        data = text.encode()
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        assert list(iter_json_values(chunks)) == values


def test_a_truncated_file_is_an_error_not_a_short_count() -> None:
    from pipeline.errors import PermanentError

    with pytest.raises(PermanentError):
        list(iter_json_values([b'[{"a": 1}, {"b": ']))
