"""The local poller has the semantics of Lambda's SQS event source mapping.

moto in-process, a real queue with a DLQ (maxReceiveCount 5), and a fake handler: batch
size and window, the record shape, partial batch failures, poison messages, start/stop.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from imgpipe.local.poller import BatchResult, SqsPoller

REGION = "us-east-1"
MAX_RECEIVES = 5


@dataclass
class Queues:
    sqs: Any
    url: str
    arn: str
    dlq_url: str

    def send(self, *bodies: str, **kwargs: Any) -> list[str]:
        return [self.sqs.send_message(QueueUrl=self.url, MessageBody=b, **kwargs)["MessageId"]
                for b in bodies]

    def depth(self, url: str | None = None) -> tuple[int, int]:
        """(visible, in flight) as SQS reports them."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.url,
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return (int(attrs["ApproximateNumberOfMessages"]),
                int(attrs["ApproximateNumberOfMessagesNotVisible"]))

    def drain_dlq(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10,
                                           MessageAttributeNames=["All"]).get("Messages", [])
            if not got:
                return out
            out.extend(got)


@pytest.fixture
def queues(mocked_aws: None) -> Iterator[Queues]:
    sqs = boto3.client("sqs", region_name=REGION)
    dlq_url = sqs.create_queue(QueueName="ingest-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName="ingest", Attributes={
        "VisibilityTimeout": "30",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": MAX_RECEIVES}),
    })["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    yield Queues(sqs=sqs, url=url, arn=arn, dlq_url=dlq_url)


@dataclass
class FakeHandler:
    """Records every invocation; `decide(event)` returns the response (or raises)."""

    decide: Callable[[dict[str, Any]], Any] = lambda event: {"batchItemFailures": []}
    events: list[dict[str, Any]] = field(default_factory=list)
    remaining: list[tuple[int, int]] = field(default_factory=list)

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        first = context.get_remaining_time_in_millis()
        time.sleep(0.05)
        self.remaining.append((first, context.get_remaining_time_in_millis()))
        self.events.append(event)
        return self.decide(event)

    def bodies(self, i: int = -1) -> list[str]:
        return [r["body"] for r in self.events[i]["Records"]]


def fail_bodies(*bodies: str) -> Callable[[dict[str, Any]], Any]:
    def decide(event: dict[str, Any]) -> Any:
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]}
                                      for r in event["Records"] if r["body"] in bodies]}
    return decide


def poller(q: Queues, handler: FakeHandler, **kwargs: Any) -> SqsPoller:
    kwargs.setdefault("retry_visibility_s", 0)
    return SqsPoller(q.sqs, q.url, handler, region=REGION, **kwargs)


# ---- batching ----------------------------------------------------------------------------


def test_batch_size_is_respected(queues: Queues) -> None:
    queues.send(*[f"m{i}" for i in range(15)])
    handler = FakeHandler()
    p = poller(queues, handler, batch_size=10)
    first, second = p.poll_once(wait_s=0), p.poll_once(wait_s=0)
    assert first is not None and second is not None
    assert (first.received, second.received) == (10, 5)
    assert [len(e["Records"]) for e in handler.events] == [10, 5]
    assert sorted(handler.bodies(0) + handler.bodies(1)) == sorted(f"m{i}" for i in range(15))
    assert p.poll_once(wait_s=0) is None
    assert queues.depth() == (0, 0)


def test_a_small_batch_size_splits_one_receive(queues: Queues) -> None:
    queues.send(*[f"m{i}" for i in range(7)])
    handler = FakeHandler()
    p = poller(queues, handler, batch_size=3)
    sizes = []
    while (r := p.poll_once(wait_s=0)) is not None:
        sizes.append(r.received)
    assert sizes == [3, 3, 1]


def test_the_batching_window_collects_late_arrivals_into_one_batch(queues: Queues) -> None:
    handler = FakeHandler()
    p = poller(queues, handler, batch_size=10, batching_window_s=1)
    queues.send("early")

    def later() -> None:
        for body in ("late-1", "late-2"):
            time.sleep(0.25)
            queues.send(body)

    sender = threading.Thread(target=later)
    started = time.monotonic()
    sender.start()
    result = p.poll_once(wait_s=1)
    sender.join()
    took = time.monotonic() - started
    assert result is not None and result.received == 3
    assert sorted(handler.bodies()) == ["early", "late-1", "late-2"]
    assert 0.9 < took < 3.0, f"the window is 1 s from the first message, took {took:.2f} s"


def test_a_full_batch_does_not_wait_for_the_window(queues: Queues) -> None:
    queues.send("a", "b", "c")
    handler = FakeHandler()
    p = poller(queues, handler, batch_size=3, batching_window_s=10)
    started = time.monotonic()
    result = p.poll_once(wait_s=1)
    assert result is not None and result.received == 3
    assert time.monotonic() - started < 1.5


def test_without_a_window_what_is_there_is_sent_at_once(queues: Queues) -> None:
    queues.send("only")
    handler = FakeHandler()
    p = poller(queues, handler, batch_size=10, batching_window_s=0)
    started = time.monotonic()
    result = p.poll_once(wait_s=1)
    assert result is not None and result.received == 1
    assert time.monotonic() - started < 1.0


# ---- the event and the context -----------------------------------------------------------


def test_records_have_lambdas_shape_and_the_context_counts_down(queues: Queues) -> None:
    body = json.dumps({"Records": [{"s3": {"object": {"key": "incoming/caf%C3%A9.jpg"}}}]})
    [mid] = queues.send(body, MessageAttributes={
        "origin": {"DataType": "String", "StringValue": "test"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
    })
    handler = FakeHandler()
    p = poller(queues, handler, function_timeout_s=3)
    p.poll_once(wait_s=0)
    [record] = handler.events[0]["Records"]
    assert set(record) >= {"messageId", "receiptHandle", "body", "attributes",
                           "messageAttributes", "md5OfBody", "eventSource", "eventSourceARN",
                           "awsRegion"}
    assert record["messageId"] == mid
    assert record["body"] == body
    assert record["md5OfBody"] == hashlib.md5(body.encode()).hexdigest()
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == queues.arn
    assert record["awsRegion"] == REGION
    attrs = record["attributes"]
    assert attrs["ApproximateReceiveCount"] == "1"
    assert {"SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp"} <= set(attrs)
    assert all(isinstance(v, str) for v in attrs.values())
    # Lambda's shape for message attributes: camelCase, binary as base64 text.
    assert record["messageAttributes"]["origin"] == {
        "stringValue": "test", "stringListValues": [], "binaryListValues": [],
        "dataType": "String"}
    blob = record["messageAttributes"]["blob"]
    assert blob["dataType"] == "Binary"
    assert blob["binaryValue"] == base64.b64encode(b"\x00\x01").decode()
    assert len(record["md5OfMessageAttributes"]) == 32
    json.dumps(handler.events[0])  # what Lambda hands over is JSON

    first, after = handler.remaining[0]
    assert 2_500 < first <= 3_000
    assert 30 <= first - after < 1_000, "the remaining time counts down during the call"


# ---- partial batch failures --------------------------------------------------------------


def test_only_successes_are_deleted_and_failures_come_back(queues: Queues) -> None:
    bodies = [f"m{i}" for i in range(5)]
    ids = dict(zip(bodies, queues.send(*bodies), strict=True))
    handler = FakeHandler(decide=fail_bodies("m1", "m3"))
    batches: list[BatchResult] = []
    p = poller(queues, handler, on_batch=batches.append)
    result = p.poll_once(wait_s=0)
    assert result is not None
    assert (result.received, result.deleted) == (5, 3)
    assert sorted(result.failed) == sorted([ids["m1"], ids["m3"]])
    assert batches == [result]
    assert sum(queues.depth()) == 2, "exactly the two failures stay in the queue"

    handler.decide = lambda event: {"batchItemFailures": []}
    again = p.poll_once(wait_s=1)
    assert again is not None and again.received == 2
    records = handler.events[-1]["Records"]
    assert sorted(r["body"] for r in records) == ["m1", "m3"]
    assert sorted(r["messageId"] for r in records) == sorted([ids["m1"], ids["m3"]])
    assert {r["attributes"]["ApproximateReceiveCount"] for r in records} == {"2"}
    assert queues.depth() == (0, 0)


def test_failures_wait_for_the_queues_visibility_timeout(queues: Queues) -> None:
    queues.sqs.set_queue_attributes(QueueUrl=queues.url, Attributes={"VisibilityTimeout": "1"})
    queues.send("ok", "bad")
    handler = FakeHandler(decide=fail_bodies("bad"))
    p = poller(queues, handler, retry_visibility_s=None)
    p.poll_once(wait_s=0)
    assert queues.depth() == (0, 1), "in flight until the visibility timeout"
    assert p.poll_once(wait_s=0) is None
    time.sleep(1.1)
    result = p.poll_once(wait_s=1)
    assert result is not None and handler.bodies() == ["bad"]
    assert handler.events[-1]["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"


@pytest.mark.parametrize("response", [
    None, {}, {"batchItemFailures": []}, {"batchItemFailures": None},
])
def test_a_successful_response_deletes_the_batch(queues: Queues, response: Any) -> None:
    queues.send("a", "b", "c")
    p = poller(queues, FakeHandler(decide=lambda event: response))
    result = p.poll_once(wait_s=0)
    assert result is not None and (result.deleted, result.failed) == (3, [])
    assert queues.depth() == (0, 0)


@pytest.mark.parametrize("bad", [
    {"itemIdentifier": ""},
    {"itemIdentifier": None},
    {"itemIdentifier": "not-a-message-in-this-batch"},
    {"itemidentifier": "wrong key name"},
    "a bare string",
])
def test_an_empty_or_unknown_identifier_fails_the_whole_batch(queues: Queues, bad: Any) -> None:
    queues.send("a", "b", "c")

    def decide(event: dict[str, Any]) -> Any:
        first = event["Records"][0]["messageId"]
        return {"batchItemFailures": [{"itemIdentifier": first}, bad]}

    handler = FakeHandler(decide=decide)
    p = poller(queues, handler)
    result = p.poll_once(wait_s=0)
    assert result is not None and result.deleted == 0 and len(result.failed) == 3
    assert sum(queues.depth()) == 3, "nothing may be deleted"
    again = p.poll_once(wait_s=1)
    assert again is not None and again.received == 3


def test_a_handler_exception_fails_the_whole_batch(queues: Queues) -> None:
    queues.send("a", "b", "c")

    def boom(event: dict[str, Any]) -> Any:
        raise RuntimeError("model exploded")

    p = poller(queues, FakeHandler(decide=boom))
    result = p.poll_once(wait_s=0)
    assert result is not None
    assert result.deleted == 0 and len(result.failed) == 3
    assert result.error is not None and "model exploded" in result.error
    assert sum(queues.depth()) == 3


class DeleteFailsFor:
    """The SQS client, but DeleteMessageBatch reports entry failures for some bodies."""

    def __init__(self, inner: Any, bodies: set[str]) -> None:
        self.inner, self.bodies, self.handles = inner, bodies, set[str]()

    def receive_message(self, **kwargs: Any) -> Any:
        resp = self.inner.receive_message(**kwargs)
        self.handles |= {m["ReceiptHandle"] for m in resp.get("Messages", [])
                         if m["Body"] in self.bodies}
        return resp

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> Any:  # noqa: N803
        bad = [e for e in Entries if e["ReceiptHandle"] in self.handles]
        good = [e for e in Entries if e not in bad]
        resp = self.inner.delete_message_batch(QueueUrl=QueueUrl, Entries=good) if good else {}
        return {"Successful": resp.get("Successful", []),
                "Failed": [{"Id": e["Id"], "SenderFault": True,
                            "Code": "ReceiptHandleIsInvalid", "Message": "expired"}
                           for e in bad]}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_failed_delete_is_not_counted_as_deleted(queues: Queues) -> None:
    queues.send("a", "b", "c")
    p = SqsPoller(DeleteFailsFor(queues.sqs, {"b"}), queues.url, FakeHandler(), region=REGION)
    result = p.poll_once(wait_s=0)
    assert result is not None and (result.received, result.deleted) == (3, 2)
    assert sum(queues.depth()) == 1


# ---- poison messages ---------------------------------------------------------------------


def test_a_poison_message_ends_in_the_dlq_body_intact(queues: Queues) -> None:
    poison = '{"Records": [ {"s3": "\\u00e9 caf\u00e9 \u6771\u4eac"} ]}\n\t  trailing  '
    queues.send(poison, MessageAttributes={"origin": {"DataType": "String",
                                                      "StringValue": "s3"}})
    queues.send("fine")
    handler = FakeHandler(decide=fail_bodies(poison))
    p = poller(queues, handler)
    for _ in range(MAX_RECEIVES + 3):
        if p.poll_once(wait_s=0) is None:
            break
    seen = [r["attributes"]["ApproximateReceiveCount"]
            for e in handler.events for r in e["Records"] if r["body"] == poison]
    assert seen == [str(n) for n in range(1, MAX_RECEIVES + 1)], "maxReceiveCount receives"
    assert queues.depth() == (0, 0), "no longer in the main queue"
    [dead] = queues.drain_dlq()
    assert dead["Body"] == poison, "byte-for-byte"
    assert dead["MD5OfBody"] == hashlib.md5(poison.encode()).hexdigest()
    assert dead["MessageAttributes"]["origin"]["StringValue"] == "s3"


# ---- lifecycle ---------------------------------------------------------------------------


def test_start_processes_messages_and_stop_is_prompt(queues: Queues) -> None:
    handler = FakeHandler()
    batches: list[BatchResult] = []
    p = poller(queues, handler, on_batch=batches.append)
    p.start()
    queues.send("a", "b")
    deadline = time.monotonic() + 5
    while sum(b.deleted for b in batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(b.deleted for b in batches) == 2
    threads = list(p._threads)
    p.stop(timeout=5)  # a long poll is 1 s: a poller still running after 5 s is stuck
    assert threads and not any(t.is_alive() for t in threads)
    assert queues.depth() == (0, 0)


def test_stop_is_prompt_inside_a_long_batching_window(queues: Queues) -> None:
    handler = FakeHandler()
    p = poller(queues, handler, batch_size=10, batching_window_s=15)
    p.start()
    queues.send("waiting for company")
    time.sleep(0.5)  # the poller now waits for more messages within its window
    threads = list(p._threads)
    # Each receive inside the window waits at most 1 s, so stop() returns long before the
    # 15 s window would have ended; a thread still alive after 5 s waited for the window.
    p.stop(timeout=5)
    assert threads and not any(t.is_alive() for t in threads)
    assert handler.bodies() == ["waiting for company"], "what was received is still handled"


def test_a_stopped_poller_can_start_again(queues: Queues) -> None:
    handler = FakeHandler()
    p = poller(queues, handler)
    p.start()
    p.stop(timeout=5)
    p.start()
    queues.send("after restart")
    deadline = time.monotonic() + 5
    while not handler.events and time.monotonic() < deadline:
        time.sleep(0.05)
    p.stop(timeout=5)
    assert handler.events and handler.bodies() == ["after restart"]


def test_a_quick_release_grows_with_each_receive(queues: Queues) -> None:
    # The chaos run's quick release: 2, 6, 18, 54 s before the 5th and last receive, so a
    # fault that lasts seconds cannot send a message to the DLQ.
    p = poller(queues, FakeHandler(), retry_visibility_s=2)
    waits = [p._retry_after({"Attributes": {"ApproximateReceiveCount": str(n)}})
             for n in range(1, 7)]
    assert waits == [2, 6, 18, 54, 120, 120]
