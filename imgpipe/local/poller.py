"""An SQS poller with the semantics of Lambda's event source mapping.

moto's own SQS -> Lambda trigger needs Docker and ignores batch size and partial batch
failures, so the local stack drives the handler itself, the way Lambda does:

- long-poll until `batch_size` messages or `batching_window_s` since the first one;
- invoke the handler with an SQS event (same record shape as Lambda's) and a context whose
  `get_remaining_time_in_millis` counts down the function timeout;
- `batchItemFailures`: delete every other message; the failed ones stay and become visible
  again after the visibility timeout; an empty or unknown identifier fails the whole batch
  (as Lambda does); an exception from the handler fails the whole batch;
- after maxReceiveCount the queue's redrive policy moves a message to the DLQ (the
  emulator's SQS does that, like the real one).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SqsPoller", "BatchResult", "LambdaContext"]

Handler = Callable[[dict[str, Any], Any], Any]
log = logging.getLogger("imgpipe.local")


class LambdaContext:
    """Just enough of Lambda's context object for Powertools and our deadline checks."""

    def __init__(self, function_name: str, timeout_s: float, region: str = "us-east-1",
                 memory_mb: int = 2048) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.invoked_function_arn = (
            f"arn:aws:lambda:{region}:123456789012:function:{function_name}"
        )
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class BatchResult:
    received: int
    deleted: int
    failed: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


class SqsPoller:
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        handler: Handler,
        *,
        function_name: str = "imgpipe-ingest",
        batch_size: int = 10,
        batching_window_s: float = 0.0,
        function_timeout_s: float = 120.0,
        region: str = "us-east-1",
        queue_arn: str = "",
        retry_visibility_s: int | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.sqs = sqs
        self.queue_url = queue_url
        self.handler = handler
        self.function_name = function_name
        self.batch_size = batch_size
        self.batching_window_s = batching_window_s
        self.function_timeout_s = function_timeout_s
        self.region = region
        self.queue_arn = queue_arn or f"arn:aws:sqs:{region}:123456789012:" + queue_url.rsplit(
            "/", 1)[-1]
        self.retry_visibility_s = retry_visibility_s
        self.on_batch = on_batch
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.batches = 0

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start `concurrency` pollers, each invoking the handler one batch at a time, as
        the event source mapping scales concurrent invocations up to its maximum."""
        self._stop.clear()  # a stopped poller can be started again
        self._threads = [
            threading.Thread(target=self.run, name=f"imgpipe-poller-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def signal_stop(self) -> None:
        """Receive no more batches; the batches in flight finish (see `stop`)."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once(wait_s=1)
            except Exception as e:  # the emulator going away on shutdown, etc.
                if self._stop.is_set():
                    break
                log.warning("poller error: %s", e)
                self._stop.wait(1.0)

    # ---- one batch ---------------------------------------------------------------------

    def poll_once(self, wait_s: int = 1) -> BatchResult | None:
        messages = self._collect(wait_s)
        if not messages:
            return None
        started = time.monotonic()
        event = {"Records": [self._record(m) for m in messages]}
        context = LambdaContext(self.function_name, self.function_timeout_s, self.region)
        by_id = {m["MessageId"]: m for m in messages}
        try:
            response = self.handler(event, context)
            failed = self._failed_ids(response, by_id)
            error = None
        except Exception as e:  # the whole invocation failed: nothing is deleted
            failed = list(by_id)
            error = f"{type(e).__name__}: {e}"
            log.error("handler failed for the whole batch: %s", error)
        to_delete = [m for mid, m in by_id.items() if mid not in set(failed)]
        deleted = self._delete(to_delete)
        if failed and self.retry_visibility_s is not None:
            self._retry_sooner([by_id[mid] for mid in failed])
        result = BatchResult(received=len(messages), deleted=deleted, failed=failed,
                             error=error, seconds=time.monotonic() - started)
        with self._lock:
            self.batches += 1
        if self.on_batch:
            self.on_batch(result)
        return result

    def _collect(self, wait_s: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        first_at: float | None = None
        while len(messages) < self.batch_size and not self._stop.is_set():
            if first_at is None:
                wait = wait_s
            else:
                left = self.batching_window_s - (time.monotonic() - first_at)
                if left <= 0:
                    break
                # At most 1 s per long poll, so `stop()` is noticed within a long window.
                wait = max(0, min(int(left + 0.999), 1))
            resp = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.batch_size - len(messages)),
                WaitTimeSeconds=wait,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            got = resp.get("Messages", [])
            if got and first_at is None:
                first_at = time.monotonic()
            messages.extend(got)
            if first_at is None:
                return messages  # nothing arrived in this long poll
            if not got and self.batching_window_s <= 0:
                break
        return messages

    def _record(self, m: Mapping[str, Any]) -> dict[str, Any]:
        body = m["Body"]
        return {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": body,
            "attributes": dict(m.get("Attributes", {})),
            "messageAttributes": {name: _lambda_message_attribute(value) for name, value
                                  in m.get("MessageAttributes", {}).items()},
            "md5OfBody": m.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest(),
            "md5OfMessageAttributes": m.get("MD5OfMessageAttributes"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.region,
        }

    @staticmethod
    def _failed_ids(response: Any, by_id: Mapping[str, Any]) -> list[str]:
        if not isinstance(response, Mapping) or "batchItemFailures" not in response:
            return []
        failures = response.get("batchItemFailures") or []
        ids: list[str] = []
        for f in failures:
            mid = f.get("itemIdentifier") if isinstance(f, Mapping) else None
            if not mid or mid not in by_id:
                # Lambda treats an empty or unknown identifier as a failed batch.
                log.error("handler returned an invalid itemIdentifier %r: whole batch fails",
                          mid)
                return list(by_id)
            ids.append(mid)
        return list(dict.fromkeys(ids))

    def _delete(self, messages: list[dict[str, Any]]) -> int:
        """Delete `messages`; returns how many SQS confirmed (a failed one comes back)."""
        deleted = 0
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            resp = self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                         for i, m in enumerate(chunk)],
            )
            deleted += len(resp.get("Successful", []))
            for f in resp.get("Failed", []):
                log.warning("could not delete message %s: %s (it will be delivered again)",
                            chunk[int(f["Id"])]["MessageId"], f.get("Code"))
        return deleted

    def _retry_after(self, message: dict[str, Any]) -> int:
        """`retry_visibility_s`, tripled for each earlier receive (at most 120 s): with
        the template's maxReceiveCount of 5 the receives span 80 s and more, so a fault of
        seconds does not use up a message's receives before the DLQ (on AWS the queue's
        visibility timeout spaces them by minutes)."""
        assert self.retry_visibility_s is not None
        count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        return int(min(120, self.retry_visibility_s * 3 ** max(0, count - 1)))

    def _retry_sooner(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"],
                          "VisibilityTimeout": self._retry_after(m)}
                         for i, m in enumerate(chunk)],
            )


def _lambda_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    """An SQS message attribute as Lambda puts it in a record: camelCase, binary as base64."""

    def b64(data: Any) -> str:
        return base64.b64encode(data if isinstance(data, bytes) else str(data).encode()).decode()

    out: dict[str, Any] = {}
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        out["binaryValue"] = b64(value["BinaryValue"])
    out["stringListValues"] = list(value.get("StringListValues", []))
    out["binaryListValues"] = [b64(v) for v in value.get("BinaryListValues", [])]
    out["dataType"] = value.get("DataType", "String")
    return out
