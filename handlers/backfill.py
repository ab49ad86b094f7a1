"""Lambda entry point for one backfill item batch (Step Functions Distributed Map child).

Returns the counts per status; raises `BackfillIncomplete` when some objects hit transient
faults, so the state machine's Retry runs the batch again (finished objects are skipped).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from pipeline.aws import create_clients
from pipeline.backfill import (
    BackfillIncomplete,
    parse_batch,
    plan_batches,
    run_batch,
    summarize,
)
from pipeline.factory import build_service
from pipeline.service import ClassificationService, deadline_from
from pipeline.settings import Settings

logger = Logger(service="imgpipe")
metrics = Metrics(namespace="imgpipe", service="imgpipe")
tracer = Tracer(service="imgpipe")
_services: dict[str, ClassificationService] = {}
_lock = threading.Lock()


def get_service(model_source: str = "") -> ClassificationService:
    """One service per model source (the execution input's `model`), built once per
    container."""
    with _lock:
        if model_source not in _services:
            settings = Settings.from_env(os.environ)
            if model_source:
                settings = settings.with_(model_source=model_source)
            _services[model_source] = build_service(settings, logger=logger)
        return _services[model_source]


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "plan" in event:  # the local stack's stand-in for ItemReader + ItemBatcher
        plan = event["plan"]
        s3 = create_clients(Settings.from_env(os.environ)).s3
        batches = plan_batches(s3, plan["bucket"], plan.get("prefix", ""),
                               plan.get("max_items_per_batch", 64), plan.get("batch_input", {}))
        metrics.add_metric(name="BackfillBatchesPlanned", unit=MetricUnit.Count,
                           value=len(batches))
        return {"batches": batches}
    if "summarize" in event:  # the state machine's last step
        step = event["summarize"]
        s3 = create_clients(Settings.from_env(os.environ)).s3
        summary = summarize(step.get("map_run"), s3, step.get("request"))
        metrics.add_metric(name="BackfillRunsSummarized", unit=MetricUnit.Count, value=1)
        logger.info("backfill summary", extra=summary)
        return summary
    batch = parse_batch(event, Settings.from_env(os.environ).output_prefix)
    service = get_service(batch.model)
    counts, outcomes = run_batch(service, batch, deadline_from(context))
    for status, count in counts.items():
        if count:
            metrics.add_metric(name=f"Backfill{status.capitalize()}", unit=MetricUnit.Count,
                               value=count)
    logger.info("backfill batch done", extra={"bucket": batch.bucket, "counts": counts,
                                              "model": service.model_id})
    if counts["failed"]:
        failed = [o.ref.key for o in outcomes if o.status == "failed"]
        raise BackfillIncomplete(
            f"{counts['failed']} of {len(outcomes)} object(s) hit transient faults "
            f"(first: {failed[0]}); the batch will be retried"
        )
    return {"model": service.model_id, "counts": counts}
