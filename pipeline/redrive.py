"""Move messages from a dead-letter queue back to its source queue.

SQS's own StartMessageMoveTask does this on AWS, but moto has no such operation, so this is
a plain receive / send / delete loop that works against both: each batch of up to 10 is
sent to the source queue with SendMessageBatch (body and message attributes as they were)
and deleted from the DLQ only where the send succeeded. A crash between the send and the
delete leaves a message in both queues; the pipeline is idempotent, so that is a duplicate
delivery and no loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipeline.errors import ImgpipeError

__all__ = ["redrive", "RedriveError", "resolve_queue_url"]

# System attributes a FIFO source queue needs again on the way back.
_FIFO_ATTRIBUTES = {"MessageGroupId": "MessageGroupId",
                    "MessageDeduplicationId": "MessageDeduplicationId"}


class RedriveError(ImgpipeError):
    """Some messages could not be sent back; `moved` says how many were before that."""

    def __init__(self, message: str, moved: int) -> None:
        super().__init__(message)
        self.moved = moved


def redrive(
    sqs_client: Any,
    dlq_url: str,
    queue_url: str,
    max_messages: int | None = None,
    *,
    visibility_timeout_s: int = 60,
    wait_s: int = 1,
    on_moved: Callable[[Mapping[str, Any]], None] | None = None,
) -> int:
    """Move up to `max_messages` (None: all) from `dlq_url` to `queue_url`; returns the count.

    Stops when a receive comes back empty (a long poll of `wait_s`, so an SQS short poll's
    sampling cannot end the loop early). Messages stay invisible in the DLQ for
    `visibility_timeout_s` while they are moved, so none is received twice in one run.
    A failed send raises `RedriveError` after releasing those messages back to the DLQ.
    """
    if max_messages is not None and max_messages < 0:
        raise ValueError("max_messages must be >= 0")
    moved = 0
    while max_messages is None or moved < max_messages:
        want = 10 if max_messages is None else min(10, max_messages - moved)
        resp = sqs_client.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=want,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_timeout_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = resp.get("Messages", [])
        if not messages:
            break
        by_id = {str(i): m for i, m in enumerate(messages)}
        sent = sqs_client.send_message_batch(
            QueueUrl=queue_url,
            Entries=[_entry(entry_id, m) for entry_id, m in by_id.items()],
        )
        ok = [by_id[e["Id"]] for e in sent.get("Successful", [])]
        undeleted = _delete(sqs_client, dlq_url, ok) if ok else 0
        for m in ok:
            if on_moved is not None:
                on_moved(m)
        moved += len(ok)
        if undeleted:
            # Sent, yet still in the DLQ: a later redrive sends them again (a duplicate).
            raise RedriveError(
                f"moved {moved} message(s), but {undeleted} of them could not be deleted "
                f"from the DLQ and would be sent again by another redrive",
                moved,
            )
        failed = sent.get("Failed", [])
        if failed:
            sqs_client.change_message_visibility_batch(
                QueueUrl=dlq_url,
                Entries=[{"Id": f["Id"], "ReceiptHandle": by_id[f["Id"]]["ReceiptHandle"],
                          "VisibilityTimeout": 0} for f in failed],
            )
            first = failed[0]
            raise RedriveError(
                f"moved {moved} message(s), then {len(failed)} could not be sent to "
                f"{queue_url}: {first.get('Code', '?')}: {first.get('Message', '')} "
                f"(they are still in the DLQ)",
                moved,
            )
    return moved


def _entry(entry_id: str, m: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"Id": entry_id, "MessageBody": m["Body"]}
    if m.get("MessageAttributes"):
        entry["MessageAttributes"] = {
            name: {k: v for k, v in value.items()
                   if k in ("DataType", "StringValue", "BinaryValue")}
            for name, value in m["MessageAttributes"].items()
        }
    attributes = m.get("Attributes", {})
    for source, target in _FIFO_ATTRIBUTES.items():
        if attributes.get(source):
            entry[target] = attributes[source]
    return entry


def _delete(sqs_client: Any, dlq_url: str, messages: list[dict[str, Any]]) -> int:
    """Delete `messages` from the DLQ; returns how many could not be deleted."""
    resp = sqs_client.delete_message_batch(
        QueueUrl=dlq_url,
        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                 for i, m in enumerate(messages)],
    )
    return len(resp.get("Failed", []))


def resolve_queue_url(sqs_client: Any, name_or_url: str) -> str:
    """A queue URL as given, or looked up by name (GetQueueUrl)."""
    if name_or_url.startswith(("https://", "http://")):
        return name_or_url
    missing = getattr(getattr(sqs_client, "exceptions", None), "QueueDoesNotExist", None)
    try:
        url: str = sqs_client.get_queue_url(QueueName=name_or_url)["QueueUrl"]
    except Exception as e:
        if missing is not None and isinstance(e, missing):
            raise ImgpipeError(f"no queue named {name_or_url!r} in this account/region") from e
        raise
    return url
