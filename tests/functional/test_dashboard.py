"""The CloudWatch dashboard shows what the handlers emit: every metric of the imgpipe
namespace it draws is one the code writes, and it watches the stack's own queues and
functions."""

from __future__ import annotations

import json
import re
from typing import Any

from imgpipe.local.provision import DEFAULT_TEMPLATE, translate_template
from pipeline.observe import TIMING_METRICS

STATUSES = ("classified", "rejected", "gone", "skipped", "superseded", "failed")


def emitted_names() -> set[str]:
    """The metric names `add_outcome_metrics` can write, for ingest and backfill."""
    from pipeline.observe import add_outcome_metrics

    class Recorder:
        def __init__(self) -> None:
            self.names: set[str] = set()

        def add_metric(self, name: str, unit: str, value: float) -> None:
            self.names.add(name)

    class Record:
        fetch_ms = decode_ms = inference_ms = event_to_record_ms = 1.0

    class Outcome:
        def __init__(self, status: str) -> None:
            self.status, self.record = status, Record()

    rec = Recorder()
    for prefix in ("", "Backfill"):
        add_outcome_metrics(rec, [Outcome(s) for s in STATUSES], 16, prefix=prefix)
    return rec.names


def dashboard() -> tuple[dict[str, Any], dict[str, Any]]:
    cfn = translate_template(DEFAULT_TEMPLATE, {})
    [(name, res)] = [(k, v) for k, v in cfn["Resources"].items()
                     if v["Type"] == "AWS::CloudWatch::Dashboard"]
    body, variables = res["Properties"]["DashboardBody"]["Fn::Sub"]
    # Fill the ${...} references so the JSON can be read; their targets are checked below.
    filled = re.sub(r"\$\{([^}]+)\}", lambda m: f"REF:{m.group(1)}", body)
    return json.loads(filled), {"vars": variables, "resources": cfn["Resources"]}


def test_every_imgpipe_metric_on_the_dashboard_is_emitted_by_the_code() -> None:
    doc, _ = dashboard()
    drawn = {m[1] for w in doc["widgets"] for m in w["properties"]["metrics"]
             if m[0] == "imgpipe"}
    assert drawn, "the dashboard draws the handlers' metrics"
    assert drawn <= emitted_names(), drawn - emitted_names()
    for name in ("BatchSize", "ImagesClassified", "ImagesFailed", *TIMING_METRICS.values()):
        assert name in drawn, name


def test_the_dashboard_watches_the_stacks_queues_and_functions() -> None:
    doc, ctx = dashboard()
    refs = {m[3] for w in doc["widgets"] for m in w["properties"]["metrics"]
            if m[0] in ("AWS/SQS", "AWS/Lambda")}
    assert refs == {"REF:Queue", "REF:Dlq", "REF:IngestFunction", "REF:BackfillFunction"}
    assert ctx["vars"]["Queue"] == {"Fn::GetAtt": ["IngestQueue", "QueueName"]}
    assert ctx["vars"]["Dlq"] == {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}
    for function in ("IngestFunction", "BackfillFunction"):
        assert ctx["resources"][function]["Type"] == "AWS::Lambda::Function"
    titles = " ".join(w["properties"]["title"] for w in doc["widgets"]).lower()
    for word in ("queue depth", "errors", "per status", "batch size", "decode", "upload to record"):
        assert word in titles, word
