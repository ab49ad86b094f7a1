"""Lambda entry point for the SQS ingest queue (S3 ObjectCreated notifications).

The whole SQS batch goes through the core as one batched classification
(`pipeline.ingest`); the response lists exactly the message IDs whose objects hit a
transient fault, so SQS redelivers only those (ReportBatchItemFailures).
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from pipeline.events import sqs_messages
from pipeline.factory import build_service
from pipeline.ingest import process_messages
from pipeline.observe import XRaySpans, add_outcome_metrics, create_metrics
from pipeline.service import ClassificationService, deadline_from
from pipeline.settings import Settings

logger = Logger(service="imgpipe")
metrics = create_metrics()
tracer = Tracer(service="imgpipe")
spans = XRaySpans(tracer.provider)
_service: ClassificationService | None = None


def get_service() -> ClassificationService:
    """Built once per container: model download + verification + session happen here."""
    global _service
    if _service is None:
        _service = build_service(Settings.from_env(os.environ), logger=logger, spans=spans)
    return _service


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    service = get_service()
    spans.bind()
    messages = sqs_messages(event)  # a sentence, not KeyError, for an invoke with {}
    metrics.add_metric(name="MessagesReceived", unit=MetricUnit.Count, value=len(messages))
    report = process_messages(service, messages, remaining_ms=deadline_from(context))
    add_outcome_metrics(metrics, (o for _, o in report.outcomes), len(messages))
    metrics.add_metric(name="MessagesFailed", unit=MetricUnit.Count,
                       value=len(report.failed_message_ids))
    logger.info("batch done", extra={"messages": len(messages), "counts": report.counts(),
                                     "failed_messages": len(report.failed_message_ids)})
    return report.response()


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    # In Lambda, the model loads during init: a missing or corrupt one fails the init,
    # loudly, and no message is touched (they wait in the queue, then the DLQ).
    get_service()
