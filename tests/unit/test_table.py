"""The predictions table's batch read: unprocessed keys are asked for again after a
jittered, growing pause (AWS: "retry the unprocessed keys with exponential backoff")."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import TransientError
from pipeline.records import PredictionRecord
from pipeline.table import BATCH_GET_ATTEMPTS, PredictionsTable

TABLE = "predictions"
MODEL = "m@1"


def _item(image: str) -> dict[str, Any]:
    record = PredictionRecord(image=image, model=MODEL, status="gone",
                              processed_at="2026-01-01T00:00:00.000Z")
    from boto3.dynamodb.types import TypeSerializer

    ser = TypeSerializer()
    return {k: ser.serialize(v) for k, v in record.to_item().items()}


class Unprocessing:
    """A DynamoDB client whose BatchGetItem leaves the last key unprocessed `times` times."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.requests: list[dict[str, Any]] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        self.requests.append(RequestItems)
        keys = RequestItems[TABLE]["Keys"]
        if self.times > 0:
            self.times -= 1
            done, left = keys[:-1], keys[-1:]
        else:
            done, left = keys, []
        answer: dict[str, Any] = {"Responses": {TABLE: [_item(k["image"]["S"]) for k in done]}}
        if left:
            answer["UnprocessedKeys"] = {TABLE: {**RequestItems[TABLE], "Keys": left}}
        return answer


def test_unprocessed_keys_are_retried_with_growing_jittered_pauses() -> None:
    client = Unprocessing(times=2)
    pauses: list[float] = []
    ceilings: list[float] = []

    def jitter(low: float, high: float) -> float:
        ceilings.append(high)
        return high / 2

    table = PredictionsTable(client, TABLE, sleep=pauses.append, jitter=jitter)
    images = ["s3://b/a.jpg", "s3://b/b.jpg", "s3://b/c.jpg"]
    records = table.get_many((i, MODEL) for i in images)

    assert sorted(image for image, _ in records) == images
    assert len(client.requests) == 3
    # the retries ask only for what was left, with the request's own options
    assert [k["image"]["S"] for k in client.requests[1][TABLE]["Keys"]] == ["s3://b/c.jpg"]
    assert client.requests[1][TABLE]["ConsistentRead"] is True
    assert len(pauses) == 2  # one pause before each retry, none before the first call
    assert ceilings[1] > ceilings[0] > 0  # growing
    assert pauses == [c / 2 for c in ceilings]  # drawn by the jitter, not fixed


def test_keys_still_unprocessed_after_every_attempt_are_a_transient_error() -> None:
    client = Unprocessing(times=BATCH_GET_ATTEMPTS)
    pauses: list[float] = []
    table = PredictionsTable(client, TABLE, sleep=pauses.append)
    with pytest.raises(TransientError, match="keys left unprocessed"):
        table.get_many([("s3://b/a.jpg", MODEL)])
    assert len(client.requests) == BATCH_GET_ATTEMPTS
    assert len(pauses) == BATCH_GET_ATTEMPTS - 1
    assert all(p >= 0 for p in pauses)
