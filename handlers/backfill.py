"""Lambda entry point for one backfill item batch (Step Functions Distributed Map child).

Returns the counts per status; raises `BackfillIncomplete` when some objects hit transient
faults, so the state machine's Retry runs the batch again (finished objects are skipped).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from pipeline.backfill import BackfillIncomplete, parse_batch, run_batch
from pipeline.factory import build_service
from pipeline.observe import XRaySpans, add_outcome_metrics, create_metrics
from pipeline.service import ClassificationService, deadline_from
from pipeline.settings import Settings

logger = Logger(service="imgpipe")
metrics = create_metrics()
tracer = Tracer(service="imgpipe")
spans = XRaySpans(tracer.provider)
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
            _services[model_source] = build_service(settings, logger=logger, spans=spans)
        return _services[model_source]


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    batch = parse_batch(event, Settings.from_env(os.environ).output_prefix)
    service = get_service(batch.model)
    spans.bind()
    counts, outcomes = run_batch(service, batch, deadline_from(context))
    add_outcome_metrics(metrics, outcomes, len(batch.refs), prefix="Backfill")
    if counts["ignored"]:
        metrics.add_metric(name="BackfillIgnored", unit=MetricUnit.Count,
                           value=counts["ignored"])
    logger.info("backfill batch done", extra={"bucket": batch.bucket, "counts": counts,
                                              "model": service.model_id})
    if counts["failed"]:
        failed = [o.ref.key for o in outcomes if o.status == "failed"]
        raise BackfillIncomplete(
            f"{counts['failed']} of {len(outcomes)} object(s) hit transient faults "
            f"(first: {failed[0]}); the batch will be retried"
        )
    return {"model": service.model_id, "counts": counts}


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    # In Lambda, the default model loads during init (a missing or corrupt one fails the
    # init, loudly, before any batch is touched); elsewhere (tests) on first use.
    get_service()
