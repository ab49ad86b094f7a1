"""Move messages from a dead-letter queue back to its source queue.

SQS's own StartMessageMoveTask does this on AWS, but moto has no such operation, so this is
a plain receive / send / delete loop that works against both: each batch of up to 10
messages and 256 KiB (SendMessageBatch's limits) is sent to the source queue (body and
message attributes as they were) and deleted from the DLQ only where the send succeeded.
A crash between the send and the delete leaves a message in both queues; the pipeline is
idempotent, so that is a duplicate delivery and no loss. Messages in flight in the DLQ
(received by someone else) cannot be moved; `in_flight` counts them, so the command can
say so instead of reporting an empty DLQ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipeline.errors import ImgpipeError

__all__ = ["BATCH_BYTES", "RedriveError", "in_flight", "message_bytes", "redrive",
           "resolve_queue_url"]

# System attributes a FIFO source queue needs again on the way back.
# SendMessageBatch: "the sum of all a batch's individual message lengths" at most 256 KiB
# (BatchRequestTooLong beyond), whatever the queue's own message size limit.
BATCH_BYTES = 262_144
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
        groups = _batches(messages)
        for n, group in enumerate(groups):
            try:
                moved += _move(sqs_client, dlq_url, queue_url, group, moved, on_moved)
            except RedriveError:
                # The batches not tried yet go back to the DLQ at once, not after the
                # visibility timeout.
                _release(sqs_client, dlq_url, [m for g in groups[n + 1:] for m in g])
                raise
    return moved


def in_flight(sqs_client: Any, queue_url: str) -> int:
    """Messages of a queue that someone has received and not yet deleted or released
    (SQS's ApproximateNumberOfMessagesNotVisible): a receive cannot see them."""
    attrs = sqs_client.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    return int(attrs.get("Attributes", {}).get("ApproximateNumberOfMessagesNotVisible", 0))


def message_bytes(m: Mapping[str, Any]) -> int:
    """What a message counts for against SQS's size limits: its body and each message
    attribute's name, data type and value."""
    size = len(str(m["Body"]).encode("utf-8"))
    for name, value in (m.get("MessageAttributes") or {}).items():
        size += len(name.encode("utf-8")) + len(str(value.get("DataType", "")).encode())
        if value.get("StringValue") is not None:
            size += len(str(value["StringValue"]).encode("utf-8"))
        if value.get("BinaryValue") is not None:
            size += len(value["BinaryValue"])
    return size


def _batches(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """`messages` in SendMessageBatch requests of at most 10 entries and BATCH_BYTES (a
    message that large on its own is sent alone)."""
    groups: list[list[dict[str, Any]]] = []
    size = 0
    for m in messages:
        this = message_bytes(m)
        if not groups or len(groups[-1]) == 10 or size + this > BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(m)
        size += this
    return groups


def _move(
    sqs_client: Any,
    dlq_url: str,
    queue_url: str,
    messages: list[dict[str, Any]],
    moved: int,
    on_moved: Callable[[Mapping[str, Any]], None] | None,
) -> int:
    """Send one batch to the queue and delete from the DLQ what was sent; returns how many.
    Raises `RedriveError` (`moved` counting from the messages moved before) on failures."""
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
        _release(sqs_client, dlq_url, [by_id[f["Id"]] for f in failed])
        first = failed[0]
        raise RedriveError(
            f"moved {moved} message(s), then {len(failed)} could not be sent to "
            f"{queue_url}: {first.get('Code', '?')}: {first.get('Message', '')} "
            f"(they are still in the DLQ)",
            moved,
        )
    return len(ok)


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


def _release(sqs_client: Any, dlq_url: str, messages: list[dict[str, Any]]) -> None:
    """Make `messages` visible in the DLQ again right away."""
    if messages:
        sqs_client.change_message_visibility_batch(
            QueueUrl=dlq_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                     for i, m in enumerate(messages)],
        )


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
