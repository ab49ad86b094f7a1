"""The AWS quotas a large run meets, each with its default, the page that states it, and
what to raise (a Service Quotas name, a template parameter, or nothing: a hard limit).

`imgpipe plan` compares a run's rates with these. Figures as AWS's documentation gave them
when they were written down (2026-12-04, not re-checked online since); the Service Quotas
names are as the console lists them and deserve a look there before a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Quota", "QUOTAS", "LABELS_MEASURED", "quota"]


# Step Functions' throttling figures as the developer guide's source (AWS's own repository of
# it, archived in 2023) lists them; the live page,
# https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html, adds that new
# accounts start with lower state-transition quotas.
SFN_QUOTAS = ("https://github.com/awsdocs/aws-step-functions-developer-guide/blob/main/"
              "doc_source/limits-overview.md")


@dataclass(frozen=True)
class Quota:
    key: str
    name: str
    default: float
    unit: str
    source: str  # the page that states the default
    to_raise: str  # Service Quotas name, template parameter, or why it cannot be raised


QUOTAS: tuple[Quota, ...] = (
    Quota("lambda_concurrency", "Lambda concurrent executions, per account and Region",
          1000, "executions", "https://docs.aws.amazon.com/lambda/latest/dg/limits.html",
          "Service Quotas: AWS Lambda > Concurrent executions (new accounts start lower)"),
    Quota("lambda_scaling", "Lambda scaling rate, per function", 1000,
          "new execution environments per 10 s",
          "https://docs.aws.amazon.com/lambda/latest/dg/scaling-behavior.html",
          "cannot be raised: the run reaches its concurrency after that ramp"),
    Quota("esm_max_concurrency", "SQS event source MaximumConcurrency (template default 5; "
          "AWS allows 2-1000)", 5, "concurrent invocations",
          "https://docs.aws.amazon.com/lambda/latest/dg/API_ScalingConfig.html",
          "template parameter MaximumConcurrency (at most 1000)"),
    Quota("map_max_concurrency", "Distributed Map MaxConcurrency (template default 10)", 10,
          "child executions at once",
          "https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html",
          "template parameter BackfillMaxConcurrency (at most 10,000)"),
    Quota("map_children", "Distributed Map child executions in parallel", 10000,
          "child executions at once",
          "https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html",
          "cannot be raised: split the prefix into several backfills"),
    Quota("backfill_timeout", "backfill function timeout (template default 45 s; an EXPRESS "
          "child stops at 300 s, retries included)", 45, "s per batch",
          "https://docs.aws.amazon.com/step-functions/latest/dg/express-limits.html",
          "template parameter BackfillBatchSize (fewer keys a batch), or more memory"),
    Quota("sfn_express_start", "Step Functions StartExecution, Express (the Map's children), "
          "us-east-1", 6000, "starts/s (refill)", SFN_QUOTAS,
          "Service Quotas: AWS Step Functions > StartExecution throttle token refill rate"),
    Quota("sfn_standard_transitions", "Step Functions state transitions, Standard (the "
          "backfill's own execution), us-east-1", 1500, "transitions/s (refill)", SFN_QUOTAS,
          "Service Quotas: AWS Step Functions > StateTransition throttle token refill rate"),
    Quota("ddb_table_writes", "DynamoDB on-demand table write throughput (table, and each "
          "index)", 40000, "write units/s",
          "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/"
          "on-demand-capacity-mode-max-throughput.html",
          "Service Quotas: Amazon DynamoDB > Table-level write throughput limit"),
    Quota("ddb_warm_writes", "DynamoDB new on-demand table's warm write throughput", 4000,
          "write units/s",
          "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/"
          "warm-throughput-scenarios.html",
          "pre-warm the table and index (UpdateTable WarmThroughput) before the run"),
    Quota("ddb_partition_writes", "DynamoDB writes per partition (one key's ceiling)", 1000,
          "write units/s",
          "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/"
          "warm-throughput-scenarios.html",
          "cannot be raised: a hotter key needs its writes spread (a sharded index key)"),
    Quota("s3_get_prefix", "S3 GET/HEAD per partitioned prefix", 5500, "requests/s",
          "https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html",
          "no quota: S3 partitions a busy prefix itself (503 Slow Down meanwhile; retried)"),
    Quota("s3_put_prefix", "S3 PUT/COPY/POST/DELETE per partitioned prefix", 3500,
          "requests/s",
          "https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html",
          "no quota: OutputDocuments=batch writes one object a batch"),
)

# The label distribution the hottest `by-label` key is judged at: the sample photos
# (`imgpipe classify samples/*.jpg`, efficientnet-lite0@1, 2026-12-04) gave 6 labels for 6
# photos (football helmet, tiger cat, espresso, flatworm, moped, missile), so the hottest
# label holds 1/6 of the writes. Six photos say little about a real collection: a bucket of
# one subject (all cats) puts every write on one key; `--hot-label-share` gives yours.
LABELS_MEASURED: dict[str, Any] = {
    "photos": 6, "labels": 6, "hottest_share": 1 / 6,
    "source": "samples/ (6 photos), imgpipe classify, 2026-12-04"}


def quota(key: str) -> Quota:
    return next(q for q in QUOTAS if q.key == key)
