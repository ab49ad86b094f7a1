"""The emulator's own adjustments to moto give moto's answers, only cheaper."""

from __future__ import annotations

import time

import boto3
from moto import mock_aws


def test_the_retention_check_reads_the_queue_period_and_agrees_with_motos() -> None:
    from moto.sqs.models import SQSBackend, sqs_backends

    from imgpipe.local.emulator import within_retention

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        sqs.create_queue(QueueName="q", Attributes={"MessageRetentionPeriod": "60"})
        url = sqs.get_queue_url(QueueName="q")["QueueUrl"]
        for i in range(3):
            sqs.send_message(QueueUrl=url, MessageBody=str(i))
        backend = sqs_backends["123456789012"]["us-east-1"]
        messages = list(backend.get_queue("q")._messages)
        now_ms = int(time.time() * 1000)
        # sent just now, 59 s ago (kept), and 61 s ago (past the 60 s retention)
        for message, age_s in zip(messages, (0, 59, 61), strict=True):
            message.sent_timestamp = now_ms - age_s * 1000
        answers = [within_retention(backend, "q", m) for m in messages]
        assert answers == [True, True, False]
        assert answers == [SQSBackend.is_message_valid_based_on_retention_period(
            backend, "q", m) for m in messages]
