"""The pieces of S3 -> EventBridge that moto gets wrong, mended in the emulator process.

moto 5.2 emits S3's EventBridge events (when a bucket has `EventBridgeConfiguration`) and
its EventBridge delivers them to SQS targets through the rule's event pattern, prefix
filters included: the template's existing-bucket route runs on it unchanged. Two fields of
the events it emits differ from S3's:

- every event carries the same `detail.object.sequencer` ("617f08299329d189"). S3's
  sequencer orders the events of one key, and imgpipe keeps the newest: with a constant
  one, an overwrite's event looks like the event already processed, and the new content
  is never classified. Each event gets a fresh, increasing sequencer here;
- `detail.object.key` is the raw key, where S3 URL-encodes it as in its notifications
  ("red flower.jpg" as "red+flower.jpg"; pipeline/events.py decodes it), so a key holding
  `+` or `%` would be misread. It is encoded here the same way;
- `detail.object.eTag`, where S3 spells it `etag` in EventBridge events (tests/events has
  AWS's example; `eTag` is the spelling of S3's own notifications). It is renamed here.

And for every destination (queue notifications and EventBridge alike): a multipart upload
is announced twice, `ObjectCreated:Put` (moto's completion stores the object through its
ordinary put) and then `ObjectCreated:CompleteMultipartUpload`. S3 sends only the second,
so the local stack classified such photos twice; the first is dropped here
(`one_event_per_multipart_upload`).
"""

from __future__ import annotations

import itertools
import threading
from typing import Any
from urllib.parse import quote_plus

__all__ = ["MOTO_CONSTANT_SEQUENCER", "one_event_per_multipart_upload",
           "stamp_eventbridge_sequencers"]

MOTO_CONSTANT_SEQUENCER = "617f08299329d189"


def stamp_eventbridge_sequencers() -> None:
    """Patch this process's moto: S3 events sent to EventBridge get increasing sequencers,
    URL-encoded keys and `etag` spelled as S3 sends them."""
    from moto.events.models import Rule

    original = Rule.send_to_targets
    counter = itertools.count(1)
    lock = threading.Lock()

    def send_to_targets(rule: Any, event: Any, transform_input: bool = True) -> None:
        obj = (event.get("detail") or {}).get("object") if isinstance(event, dict) else None
        if (event.get("source") == "aws.s3" and isinstance(obj, dict)
                and obj.get("sequencer") == MOTO_CONSTANT_SEQUENCER):
            with lock:
                # Mended in place, once: the next rule that gets this event sees the same
                # values (its sequencer is no longer moto's constant).
                obj["sequencer"] = f"{next(counter):016X}"
                obj["key"] = quote_plus(str(obj.get("key", "")), safe="/")
                if "eTag" in obj and "etag" not in obj:
                    obj["etag"] = obj.pop("eTag")
        original(rule, event, transform_input)

    setattr(Rule, "send_to_targets", send_to_targets)  # noqa: B010


def one_event_per_multipart_upload() -> None:
    """Patch this process's moto: the object a multipart upload completes is announced once,
    as `ObjectCreated:CompleteMultipartUpload`, as S3 does."""
    from moto.s3 import notifications

    original = notifications.send_event
    put = notifications.S3NotificationEvent.OBJECT_CREATED_PUT_EVENT

    def send_event(account_id: str, event_name: Any, bucket: Any, key: Any) -> None:
        if event_name == put and getattr(key, "multipart", None) is not None:
            return  # the CompleteMultipartUpload event of the same object follows
        original(account_id, event_name, bucket, key)

    setattr(notifications, "send_event", send_event)  # noqa: B010
