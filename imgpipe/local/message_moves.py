"""SQS message move tasks (the DLQ redrive API) for the emulator process: moto 5.2 answers
`StartMessageMoveTask` and `ListMessageMoveTasks` with a 500 and a traceback in the stack's
terminal, so the README's dead-letter runbook (`aws sqs start-message-move-task`) did not
work locally.

As on SQS: the source must be a dead-letter queue of some queue; without `DestinationArn`
the messages go back to the queue whose redrive policy names the source (SQS returns each
to the queue it came from; the template has one such queue); each moved message is a new
message there (new ID, receive count 0), and leaves the source. Differences: the task
moves every visible message at once and is COMPLETED when the start call answers (SQS moves
in the background at up to `MaxNumberOfMessagesPerSecond`); messages in flight stay.
`ListMessageMoveTasks` gives the most recent tasks of a source, newest first (`MaxResults`,
1 by default, at most 10).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

__all__ = ["install", "move_messages"]

_tasks: dict[str, list[dict[str, Any]]] = {}  # source ARN -> its tasks, newest first
_lock = threading.Lock()


def install() -> None:
    """Answer the two actions in this process's moto (the emulator's)."""
    from moto.core.responses import ActionResult
    from moto.sqs.responses import SQSResponse

    def start_message_move_task(self: Any) -> Any:
        task = move_messages(self.sqs_backend, self._get_param("SourceArn"),
                             self._get_param("DestinationArn"),
                             self._get_param("MaxNumberOfMessagesPerSecond"))
        return ActionResult({"TaskHandle": task["_handle"]})

    def list_message_move_tasks(self: Any) -> Any:
        source = self._get_param("SourceArn")
        _queue_by_arn(self.sqs_backend, source)
        limit = max(1, min(10, int(self._get_param("MaxResults") or 1)))
        with _lock:
            tasks = _tasks.get(source, [])[:limit]
        return ActionResult({"Results": [
            {k: v for k, v in t.items() if not k.startswith("_")} for t in tasks]})

    setattr(SQSResponse, "start_message_move_task", start_message_move_task)  # noqa: B010
    setattr(SQSResponse, "list_message_move_tasks", list_message_move_tasks)  # noqa: B010


def move_messages(backend: Any, source_arn: str, destination_arn: str | None = None,
                  rate: int | None = None) -> dict[str, Any]:
    """Move every visible message of the dead-letter queue `source_arn`; the task's entry."""
    from moto.sqs.exceptions import InvalidParameterValue
    from moto.sqs.models import Message

    source = _queue_by_arn(backend, source_arn)
    origins = [q for q in backend.queues.values() if q.dead_letter_queue is source]
    if not origins:
        raise InvalidParameterValue(
            f"Source queue {source_arn} must be configured as a dead-letter queue of "
            f"another queue (its RedrivePolicy's deadLetterTargetArn)")
    destination = _queue_by_arn(backend, destination_arn) if destination_arn else origins[0]
    with _lock:
        running = _tasks.get(source_arn, [])
        handle = f"{uuid.uuid4()}"
        moved = 0
        for message in [m for m in source._messages if m.visible]:
            copy = Message(str(uuid.uuid4()), message.body)
            copy.message_attributes = message.message_attributes
            copy.group_id, copy.deduplication_id = message.group_id, message.deduplication_id
            copy.mark_sent(delay_seconds=0)
            destination.add_message(copy)
            message.mark_received(visibility_timeout=0)  # a receipt handle to delete it by
            source.delete_message(message.receipt_handle)
            moved += 1
        task: dict[str, Any] = {
            "_handle": handle, "Status": "COMPLETED", "SourceArn": source_arn,
            "ApproximateNumberOfMessagesMoved": moved,
            "ApproximateNumberOfMessagesToMove": moved,
            "StartedTimestamp": int(time.time() * 1000),
        }
        if destination_arn:
            task["DestinationArn"] = destination_arn
        if rate:
            task["MaxNumberOfMessagesPerSecond"] = int(rate)
        _tasks[source_arn] = [task, *running][:10]
    return task


def _queue_by_arn(backend: Any, arn: str | None) -> Any:
    from moto.sqs.exceptions import QueueDoesNotExist

    for queue in backend.queues.values():
        if queue.queue_arn == arn:
            return queue
    raise QueueDoesNotExist()
