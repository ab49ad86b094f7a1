"""The stack's terminal during a backfill: the README says the local stack turns metrics
off, yet warm backfill workers printed 2 KB CloudWatch EMF lines (Powertools flushes a
metric's 100th value whatever POWERTOOLS_METRICS_DISABLED says)."""

from __future__ import annotations

import subprocess

import boto3
import pytest

from tests.e2e.conftest import BIN, ROOT, LocalProcess

pytestmark = pytest.mark.e2e

BUCKET = "imgpipe-local"
BATCHES = 4  # of 64 (BackfillBatchSize): each worker runs more than one, 256 values or more


def test_a_backfill_prints_no_metric_lines(local_stack: LocalProcess) -> None:
    s3 = boto3.client("s3", endpoint_url=local_stack.endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    photos = [p.read_bytes() for p in sorted((ROOT / "samples").glob("*.jpg"))]
    for i in range(64 * BATCHES):  # each its own ETag: a byte after the JPEG's end marker
        s3.put_object(Bucket=BUCKET, Key=f"quiet/img-{i}.jpg",
                      Body=photos[i % len(photos)] + bytes([i % 251]))
    before = len(local_stack.output)
    done = subprocess.run([str(BIN / "imgpipe"), "backfill", f"s3://{BUCKET}/quiet/"],
                          env=local_stack.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert str(64 * BATCHES) in done.stdout
    printed = local_stack.output[before:]
    assert not [line for line in printed if '"_aws"' in line], "EMF lines in the output"
    assert not [line for line in printed if "UserWarning" in line]
