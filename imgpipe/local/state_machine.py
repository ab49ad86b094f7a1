"""The backfill state machine as moto's Step Functions interpreter can run it: the
deployed definition rewritten where that interpreter rejects or mishandles valid ASL
(`emulator_definition` lists each case), with the local planner's Task in front of a Map
that lists S3 and batches."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from imgpipe.local.distributed_map import EXPRESS_MARKER
from imgpipe.local.errors import ProvisionError

__all__ = ["LOCAL_PLANNER", "emulator_definition"]

# The local-only function the emulated state machine calls to list and batch
# (`imgpipe.local.planner`); the stack's function host runs it.
LOCAL_PLANNER = "imgpipe-local-planner"


def emulator_definition(definition: str) -> str:
    """The deployed definition rewritten for moto's Step Functions interpreter, which
    rejects or mishandles some valid ASL (moto 5.2.5):

    - `ItemBatcher` is not in its grammar, and its `s3:listObjectsV2` ItemReader reads one
      page (1,000 keys). A Map that lists S3 and batches is preceded by a `Task` calling
      the local-only planner function (`imgpipe.local.planner`), which lists the whole
      prefix, writes the ItemBatcher's batches as a JSON array to S3 (where the Map's
      ResultWriter would write) and returns only where; the Map then reads that array with
      an `s3:getObject` ItemReader. Every child gets exactly the event it gets on AWS,
      `{"BatchInput": {...}, "Items": [...]}`, and no state carries the listing, so the
      256 KB payload limit holds for any number of objects;
    - `ProcessorConfig.ExecutionType` must be `STANDARD` (EXPRESS is refused); an
      ItemProcessor that was EXPRESS gets `distributed_map.EXPRESS_MARKER` in its Comment,
      and the emulator stops its children at 5 minutes, as AWS does;
    - `ToleratedFailurePercentage` as a literal is refused by its grammar when it is an
      integer: it is written as a float. The path form is kept. The emulator applies the
      tolerance (`imgpipe.local.distributed_map`);
    - the `ResultWriter` is kept: the emulator writes AWS's documented files (manifest and
      result files, `imgpipe.local.distributed_map`), which the summary function reads.
    """
    document = json.loads(definition)

    def visit(states: dict[str, Any]) -> None:
        for name, state in list(states.items()):
            if state.get("Type") == "Map":
                batcher = state.pop("ItemBatcher", None)
                reader = state.get("ItemReader", {})
                if batcher is not None:
                    if reader.get("Resource") != "arn:aws:states:::s3:listObjectsV2":
                        raise ProvisionError("only an ItemBatcher over an s3:listObjectsV2 "
                                             "ItemReader can be emulated")
                    plan_name, map_name = name, f"{name}Batches"
                    states[map_name] = state
                    states[plan_name] = _plan_state(reader, batcher,
                                                    state.get("ResultWriter"), map_name)
                    state["ItemReader"] = {
                        "Resource": "arn:aws:states:::s3:getObject",
                        "ReaderConfig": {"InputType": "JSON"},
                        "Parameters": {"Bucket.$": "$.plan.Bucket", "Key.$": "$.plan.Key"},
                    }
                processor = state.get("ItemProcessor") or state.get("Iterator") or {}
                config = processor.get("ProcessorConfig", {})
                if config.get("ExecutionType") == "EXPRESS":
                    config["ExecutionType"] = "STANDARD"
                    processor["Comment"] = " ".join(
                        filter(None, [processor.get("Comment"), f"[{EXPRESS_MARKER}]"]))
                if isinstance(state.get("ToleratedFailurePercentage"), int):
                    state["ToleratedFailurePercentage"] = float(
                        state["ToleratedFailurePercentage"])
                visit(processor.get("States", {}))
            for branch in state.get("Branches", []):
                visit(branch.get("States", {}))

    visit(document.get("States", {}))
    return json.dumps(document, indent=2)


def _plan_state(
    reader: Mapping[str, Any], batcher: Mapping[str, Any], writer: Mapping[str, Any] | None,
    next_state: str,
) -> dict[str, Any]:
    """The Task that lists and batches for the emulator, calling the local planner."""
    if not writer:
        raise ProvisionError("a Map with an ItemBatcher needs a ResultWriter to be emulated "
                             "(its batches are written next to the results)")
    plan: dict[str, Any] = {"batch_input": batcher.get("BatchInput", {}),
                            "execution.$": "$$.Execution.Name"}
    for params, pairs in ((reader.get("Parameters", {}), (("bucket", "Bucket"),
                                                          ("prefix", "Prefix"))),
                          (writer.get("Parameters", {}), (("plan_bucket", "Bucket"),
                                                          ("plan_prefix", "Prefix")))):
        for field_name, key in pairs:
            if f"{key}.$" in params:
                plan[f"{field_name}.$"] = params[f"{key}.$"]
            else:
                plan[field_name] = params.get(key, "")
    if "MaxItemsPerBatchPath" in batcher:
        plan["max_items_per_batch.$"] = batcher["MaxItemsPerBatchPath"]
    else:
        plan["max_items_per_batch"] = batcher.get("MaxItemsPerBatch", 1)
    return {
        "Type": "Task",
        "Comment": "Emulator only: lists and batches what ItemReader + ItemBatcher would.",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": LOCAL_PLANNER, "Payload": plan},
        "ResultSelector": {"Bucket.$": "$.Payload.Bucket", "Key.$": "$.Payload.Key",
                           "batches.$": "$.Payload.batches",
                           "objects.$": "$.Payload.objects"},
        "ResultPath": "$.plan",
        "Next": next_state,
    }
