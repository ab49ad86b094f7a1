"""The predictions table: one item per (image, model), read and written only here.

Every reader of the table (the service's conditional writes, the watcher's probe, the
`results` command, reconcile and report's scan, the API's `GET /results`) comes through
this module, so an item becomes a `PredictionRecord` in one place, by one deserializer
(`record_of`). Errors are translated by `pipeline.aws.translate_client_error`,
except where a function says its caller reads them itself.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from functools import cache
from typing import Any

from pipeline.aws import error_code, translate_client_error
from pipeline.documents import token_of
from pipeline.errors import TransientError
from pipeline.records import PredictionRecord

__all__ = ["BATCH_GET_ATTEMPTS", "PredictionsTable", "read_one", "record_of", "scan_records"]

# BatchGetItem rounds per 100 keys before unprocessed keys become a TransientError (the
# message is redelivered). Between rounds: exponential backoff with full jitter, as AWS
# advises for UnprocessedKeys (a throttled table answers the retry just as fast otherwise).
BATCH_GET_ATTEMPTS = 8
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0


class PredictionsTable:
    """Reads and conditional writes of the predictions table."""

    def __init__(self, client: Any, table: str, *,
                 sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[float, float], float] = random.uniform) -> None:
        from boto3.dynamodb.types import TypeSerializer

        self.client = client
        self.table = table
        self._ser = TypeSerializer()
        self._sleep = sleep
        self._jitter = jitter

    # ---- reads ------------------------------------------------------------------------

    def get_many(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], PredictionRecord]:
        """Existing records for (image, model) pairs: BatchGetItem, 100 keys a call."""
        records = (record_of(raw) for raw in self._batch_get(keys))
        return {(r.image, r.model): r for r in records}

    def get(self, image: str, model: str) -> PredictionRecord | None:
        return self.get_many([(image, model)]).get((image, model))

    def present(self, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (image, model) pairs have an item, reading only the keys (a watcher's
        probe: the items themselves are not read or sent)."""
        return {(raw["image"]["S"], raw["model"]["S"])
                for raw in self._batch_get(keys, fields=("image", "model"))}

    def token(self, image: str, model: str) -> str | None:
        """`record_token` of the stored record (None: no record), reading only the two
        attributes it is made of: what a writer checks to know whether the record it holds
        is still the one stored."""
        for raw in self._batch_get([(image, model)], fields=("etag", "processed_at")):
            return token_of(raw["etag"]["S"] if "etag" in raw else None,
                            raw["processed_at"]["S"])
        return None

    def query_label(
        self, model: str, label: str, min_score: float | None = None, limit: int | None = None
    ) -> list[PredictionRecord]:
        """All classified images with `label` (by the `by-label` index), best first."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": "by-label",
            "KeyConditionExpression": "label_key = :k",
            "ExpressionAttributeValues": {":k": {"S": f"{model}#{label}"}},
            "ScanIndexForward": False,
        }
        if min_score is not None:
            kwargs["KeyConditionExpression"] += " AND score >= :s"
            kwargs["ExpressionAttributeValues"][":s"] = self._ser.serialize(
                Decimal(str(min_score))
            )
        return self._collect("query", kwargs, f"querying {self.table}", limit)

    # ---- writes -----------------------------------------------------------------------

    def put(self, record: PredictionRecord, expected: PredictionRecord | None) -> bool:
        """Write `record` only if the stored item is still `expected` (None: no item).

        Returns False when someone else wrote in between; the caller re-reads and decides.
        """
        item = {k: self._ser.serialize(v) for k, v in record.to_item().items()}
        kwargs: dict[str, Any] = {"TableName": self.table, "Item": item}
        if expected is None:
            kwargs["ConditionExpression"] = "attribute_not_exists(#i)"
            kwargs["ExpressionAttributeNames"] = {"#i": "image"}
        else:
            # processed_at alone could repeat (milliseconds); with the ETag it names one write.
            kwargs["ExpressionAttributeNames"] = {"#p": "processed_at", "#e": "etag"}
            kwargs["ExpressionAttributeValues"] = {":p": {"S": expected.processed_at}}
            if expected.etag is None:
                kwargs["ConditionExpression"] = "#p = :p AND attribute_not_exists(#e)"
            else:
                kwargs["ConditionExpression"] = "#p = :p AND #e = :e"
                kwargs["ExpressionAttributeValues"][":e"] = {"S": expected.etag}
        try:
            self.client.put_item(**kwargs)
        except Exception as e:
            if error_code(e) == "ConditionalCheckFailedException":
                return False
            raise translate_client_error(e, f"writing {record.image} to {self.table}") from e
        return True

    # ---- the calls --------------------------------------------------------------------

    def _batch_get(self, keys: Iterable[tuple[str, str]],
                   fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        """BatchGetItem (consistent), 100 keys a call; only `fields` when given."""
        wanted = list(dict.fromkeys(keys))
        items: list[dict[str, Any]] = []
        for start in range(0, len(wanted), 100):
            table: dict[str, Any] = {
                "Keys": [
                    {"image": {"S": image}, "model": {"S": model}}
                    for image, model in wanted[start:start + 100]
                ],
                "ConsistentRead": True,
            }
            if fields:
                table["ProjectionExpression"] = ", ".join(f"#f{i}" for i in range(len(fields)))
                table["ExpressionAttributeNames"] = {f"#f{i}": f for i, f in enumerate(fields)}
            items.extend(self._batch_get_all({self.table: table}))
        return items

    def _batch_get_all(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """One request's items, asking again for its `UnprocessedKeys` after a jittered,
        growing pause, up to `BATCH_GET_ATTEMPTS` calls."""
        items: list[dict[str, Any]] = []
        for attempt in range(BATCH_GET_ATTEMPTS):
            if attempt:
                ceiling = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (attempt - 1))
                self._sleep(self._jitter(0.0, ceiling))
            try:
                resp = self.client.batch_get_item(RequestItems=request)
            except Exception as e:
                raise translate_client_error(e, f"reading table {self.table}") from e
            items.extend(resp.get("Responses", {}).get(self.table, []))
            request = resp.get("UnprocessedKeys") or {}
            if not request:
                return items
        raise TransientError(f"reading table {self.table}: keys left unprocessed")

    def _collect(
        self, operation: str, kwargs: dict[str, Any], what: str, limit: int | None = None
    ) -> list[PredictionRecord]:
        """Every page of a query or scan, as records."""
        call = getattr(self.client, operation)
        out: list[PredictionRecord] = []
        while True:
            try:
                resp = call(**kwargs)
            except Exception as e:
                raise translate_client_error(e, what) from e
            out.extend(record_of(i) for i in resp["Items"])
            if limit is not None and len(out) >= limit:
                return out[:limit]
            if "LastEvaluatedKey" not in resp:
                return out
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


# Reads that only some callers make live outside the class: a function's role is checked
# against the calls reachable from its handler (tests/template_gates.py), and a class
# counts with all its methods, so the API's role (GetItem only) would need BatchGetItem and
# PutItem, and the ingest function's GetItem and Scan.


def record_of(raw: Mapping[str, Any]) -> PredictionRecord:
    """A DynamoDB item (attribute-value form) as the record it stores."""
    de = _deserializer()
    return PredictionRecord.from_item({k: de.deserialize(v) for k, v in raw.items()})


@cache
def _deserializer() -> Any:
    from boto3.dynamodb.types import TypeDeserializer

    return TypeDeserializer()


def read_one(client: Any, table: str, image: str, model: str) -> PredictionRecord | None:
    """One record by GetItem (consistent), for the API's `GET /results`; botocore's errors
    reach the caller as they are (the API answers them itself)."""
    item = client.get_item(
        TableName=table, ConsistentRead=True,
        Key={"image": {"S": image}, "model": {"S": model}}).get("Item")
    return record_of(item) if item else None


def scan_records(client: Any, table: str, image_prefix: str,
                 model: str) -> Iterator[PredictionRecord]:
    """Every record of `model` whose image URI starts with `image_prefix` (a table scan,
    for reconcile and report); botocore's errors reach the caller as they are (they name
    a missing table themselves)."""
    pages = client.get_paginator("scan").paginate(
        TableName=table,
        FilterExpression="begins_with(#i, :b) AND #m = :m",
        ExpressionAttributeNames={"#i": "image", "#m": "model"},
        ExpressionAttributeValues={":b": {"S": image_prefix}, ":m": {"S": model}},
        ConsistentRead=True,
    )
    for page in pages:
        for raw in page.get("Items", []):
            yield record_of(raw)
