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

__all__ = ["plan_batches", "make_planner"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def plan_batches(
    s3_client: Any, bucket: str, prefix: str, max_items_per_batch: int,
    batch_input: Mapping[str, Any],
) -> Iterator[dict[str, Any]]:
    """What ItemReader (`s3:listObjectsV2`) + ItemBatcher hand the children on AWS: batches
    of `{"Items": [{"Key", "ETag", "Size", "LastModified", "StorageClass"}], "BatchInput":
    {...}}`, in the listing's order, `max_items_per_batch` items each (the last one
    shorter)."""
    from pipeline.aws import translate_client_error

    size = max(1, int(max_items_per_batch))
    items: list[dict[str, Any]] = []
    paginator = s3_client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                modified = obj.get("LastModified")
                items.append({
                    "Key": obj["Key"],
                    "ETag": obj.get("ETag"),
                    "Size": obj.get("Size"),
                    "LastModified": modified.isoformat() if hasattr(modified, "isoformat")
                    else modified,
                    "StorageClass": obj.get("StorageClass"),
                })
                if len(items) == size:
                    yield {"Items": items, "BatchInput": dict(batch_input)}
                    items = []
    except Exception as e:
        raise translate_client_error(e, f"listing s3://{bucket}/{prefix}") from e
    if items:
        yield {"Items": items, "BatchInput": dict(batch_input)}


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
