"""Backfill batches in the shape the Distributed Map's ItemReader hands them on AWS
(tests/events/distributed_map_listobjectsv2_items.json, copied from AWS's documentation),
through the real core over moto: the listed `Etag` skips what is done and makes the read
conditional; a retried batch redoes nothing that finished."""

from __future__ import annotations

import copy
from typing import Any

from imgpipe.local.planner import listing_item, plan_batches
from pipeline.backfill import BackfillIncomplete, parse_batch, run_batch
from tests.conftest import load_event
from tests.functional.conftest import BUCKET, Harness, sample

DOCUMENTED = load_event("distributed_map_listobjectsv2_items.json")


def _items(h: Harness, keys: list[str]) -> list[dict[str, Any]]:
    """Listing entries exactly as the documented example spells them."""
    listed = h.s3.list_objects_v2(Bucket=BUCKET, Prefix="old/")["Contents"]
    by_key = {o["Key"]: o for o in listed}
    items = []
    for key in keys:
        item = copy.deepcopy(DOCUMENTED[0])
        obj = by_key[key]
        item.update(Etag=obj["ETag"], Key=key, LastModified=int(obj["LastModified"].timestamp()),
                    Size=obj["Size"])
        items.append(item)
    return items


def _batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Items": items, "BatchInput": {"bucket": BUCKET, "model": "", "overwrite": False}}


def test_the_documented_item_gives_the_listed_etag() -> None:
    batch = parse_batch(_batch(DOCUMENTED), "predictions/")
    (ref,) = batch.refs
    assert ref.key == "processData/images/n02085620_1073.jpg"
    assert ref.etag == "05704fbdccb224cb01c59005bebbad28"  # unquoted, as the core keeps it
    assert ref.size == 34910


def test_the_local_planner_makes_exactly_the_documented_shape(harness: Harness) -> None:
    harness.upload("old/coffee.jpg", sample("coffee.jpg"))
    (batch,) = plan_batches(harness.s3, BUCKET, "old/", 64, {"bucket": BUCKET})
    (item,) = batch["Items"]
    (documented,) = DOCUMENTED
    assert list(item) == list(documented)  # the same keys, in the same order
    assert {k: type(v) for k, v in item.items()} == {k: type(v) for k, v in documented.items()}
    assert item["Etag"].startswith('"') and item["Etag"].endswith('"')
    assert item == _items(harness, ["old/coffee.jpg"])[0] | {"StorageClass": "STANDARD"}
    obj = harness.s3.list_objects_v2(Bucket=BUCKET)["Contents"][0]
    assert listing_item(obj) == item


def test_a_rerun_skips_what_is_classified_for_the_listed_etag(harness: Harness) -> None:
    for name in ("coffee.jpg", "rocket.jpg", "chelsea.jpg"):
        harness.upload(f"old/{name}", sample(name))
    keys = ["old/coffee.jpg", "old/rocket.jpg", "old/chelsea.jpg"]
    first, _ = run_batch(harness.service, parse_batch(_batch(_items(harness, keys[:2])),
                                                      "predictions/"))
    assert first["classified"] == 2
    before = harness.images_classified()
    again, _ = run_batch(harness.service, parse_batch(_batch(_items(harness, keys)),
                                                      "predictions/"))
    assert (again["classified"], again["skipped"]) == (1, 2)
    assert harness.images_classified() - before == 1, "only the new object was classified"


def test_the_read_is_conditional_on_the_listed_etag(harness: Harness) -> None:
    harness.upload("old/coffee.jpg", sample("coffee.jpg"))
    items = _items(harness, ["old/coffee.jpg"])
    harness.upload("old/coffee.jpg", sample("rocket.jpg"))  # overwritten after the listing
    counts, outcomes = run_batch(harness.service, parse_batch(_batch(items), "predictions/"))
    assert counts["superseded"] == 1, [o.detail for o in outcomes]
    assert harness.record("old/coffee.jpg") is None  # the new object's own event will come


def test_a_retried_batch_does_not_redo_finished_objects(harness: Harness,
                                                         monkeypatch: Any) -> None:
    """The first attempt finishes two objects and hits a transient fault on the third
    (BackfillIncomplete: the state machine retries the batch); the retry classifies only
    the third."""
    from datetime import UTC, datetime

    import handlers.backfill
    from tests.functional.conftest import Context

    for name in ("coffee.jpg", "rocket.jpg", "chelsea.jpg"):
        harness.upload(f"old/{name}", sample(name))
    event = _batch(_items(harness, ["old/coffee.jpg", "old/rocket.jpg", "old/chelsea.jpg"]))
    # $$.Execution.StartTime, as Step Functions writes it
    event["BatchInput"]["run_started"] = datetime.now(UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    monkeypatch.setattr(handlers.backfill, "_services", {"": harness.service})
    store = harness.service.store
    original_get = store.get
    failing = {"old/chelsea.jpg"}

    def flaky_get(ref: Any, max_bytes: int) -> Any:
        if ref.key in failing:
            from pipeline.errors import TransientError

            raise TransientError("SlowDown: reduce your request rate")
        return original_get(ref, max_bytes)

    monkeypatch.setattr(store, "get", flaky_get)
    try:
        handlers.backfill.handler(event, Context())
    except BackfillIncomplete as e:
        assert "1 of 3" in str(e)
    else:
        raise AssertionError("the batch should ask for a retry")
    assert harness.images_classified() == 2
    failing.clear()
    result = handlers.backfill.handler(event, Context())
    assert harness.images_classified() == 3, "the retry classified only the third object"
    # The run classified all three (two on its first attempt): none was done before it.
    assert (result["counts"]["classified"], result["counts"]["skipped"]) == (3, 0)
