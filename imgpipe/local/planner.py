"""The local stand-in for a Distributed Map's `ItemReader` (`s3:listObjectsV2`) +
`ItemBatcher`, which the emulator's Step Functions lacks (it has no ItemBatcher, and its
listObjectsV2 reader reads one page of 1,000 keys).

The local state machine (`provision.emulator_definition`) calls this function, which
exists only in the local stack and runs in its process, before the Map: it lists the
prefix and writes the batches, exactly as the ItemBatcher makes them on AWS, as one JSON
array to S3 next to where the Map's ResultWriter would write; the Map then reads that
array with an `s3:getObject` ItemReader. No state carries the list itself, so a prefix of
any size stays far below Step Functions' 256 KB payload limit.

Event (built by the state machine):

    {"bucket": "...", "prefix": "...", "max_items_per_batch": 64,
     "batch_input": {"bucket": "...", "model": "...", "overwrite": false},
     "plan_bucket": "...", "plan_prefix": "predictions/_backfill/", "execution": "NAME"}

Result: `{"Bucket", "Key", "batches", "objects"}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["listing_item", "plan_batches", "make_planner"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def plan_batches(
    s3_client: Any, bucket: str, prefix: str, max_items_per_batch: int,
    batch_input: Mapping[str, Any],
) -> Iterator[dict[str, Any]]:
    """What ItemReader (`s3:listObjectsV2`) + ItemBatcher hand the children on AWS: batches
    of `{"Items": [...], "BatchInput": {...}}`, in the listing's order,
    `max_items_per_batch` items each (the last one shorter). Each item has exactly the
    documented shape (`listing_item`)."""
    from pipeline.aws import translate_client_error

    size = max(1, int(max_items_per_batch))
    items: list[dict[str, Any]] = []
    paginator = s3_client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                items.append(listing_item(obj))
                if len(items) == size:
                    yield {"Items": items, "BatchInput": dict(batch_input)}
                    items = []
    except Exception as e:
        raise translate_client_error(e, f"listing s3://{bucket}/{prefix}") from e
    if items:
        yield {"Items": items, "BatchInput": dict(batch_input)}


def listing_item(obj: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of a ListObjectsV2 page (as boto3 parses it) in the shape the Distributed
    Map's ItemReader hands it on, per AWS's documentation: `Etag` (spelt so, quoted as S3
    sends it), `Key`, `LastModified` in epoch seconds, `Size`, `StorageClass`
    (tests/events/distributed_map_listobjectsv2_items.json)."""
    modified: Any = obj.get("LastModified")
    if hasattr(modified, "timestamp"):
        modified = int(modified.timestamp())
    etag = str(obj.get("ETag") or "")
    if etag and not etag.startswith('"'):
        etag = f'"{etag}"'
    return {"Etag": etag, "Key": obj["Key"], "LastModified": modified,
            "Size": obj.get("Size"), "StorageClass": obj.get("StorageClass") or "STANDARD"}


def make_planner(s3_client: Callable[[], Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The planner function for the function host; `s3_client()` gives a client of the
    emulator."""

    def planner(event: dict[str, Any]) -> dict[str, Any]:
        s3 = s3_client()
        batches = list(plan_batches(s3, str(event["bucket"]), str(event.get("prefix") or ""),
                                    int(event.get("max_items_per_batch") or 1),
                                    event.get("batch_input") or {}))
        name = _UNSAFE.sub("_", str(event.get("execution") or "execution"))
        key = f"{event.get('plan_prefix') or ''}local-plans/{name}.json"
        s3.put_object(Bucket=event["plan_bucket"], Key=key,
                      Body=json.dumps(batches, separators=(",", ":")).encode(),
                      ContentType="application/json")
        return {"Bucket": event["plan_bucket"], "Key": key, "batches": len(batches),
                "objects": sum(len(b["Items"]) for b in batches)}

    return planner
