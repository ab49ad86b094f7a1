"""Lambda entry point for the backfill's last step: adds up the children's counts.

The Distributed Map's output holds only where its ResultWriter put the results; this reads
them (under the output prefix's `_backfill/`) and returns the counts, so
describe-execution shows them.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from pipeline.aws import client_for
from pipeline.backfill import summarize
from pipeline.observe import create_metrics
from pipeline.settings import Settings

logger = Logger(service="imgpipe")
metrics = create_metrics()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    s3 = client_for("s3", Settings.from_env(os.environ))
    summary = summarize(event.get("map_run"), s3, event.get("request"))
    metrics.add_metric(name="BackfillRunsSummarized", unit=MetricUnit.Count, value=1)
    logger.info("backfill summary", extra=summary)
    return summary
