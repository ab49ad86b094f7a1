"""The one piece of S3 -> EventBridge that moto gets wrong, mended in the emulator process.

moto 5.2 emits S3's EventBridge events (when a bucket has `EventBridgeConfiguration`) and
its EventBridge delivers them to SQS targets through the rule's event pattern, prefix
filters included: the template's existing-bucket route runs on it unchanged. But every
event it emits carries the same `detail.object.sequencer` ("617f08299329d189"). S3's
sequencer orders the events of one key, and imgpipe keeps the newest: with a constant one,
an overwrite's event looks like the event already processed, and the new content is never
classified. Each such event gets a fresh, increasing sequencer here, as S3 gives it.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

__all__ = ["MOTO_CONSTANT_SEQUENCER", "stamp_eventbridge_sequencers"]

MOTO_CONSTANT_SEQUENCER = "617f08299329d189"


def stamp_eventbridge_sequencers() -> None:
    """Patch this process's moto: S3 events sent to EventBridge get increasing sequencers."""
    from moto.events.models import Rule

    original = Rule.send_to_targets
    counter = itertools.count(1)
    lock = threading.Lock()

    def send_to_targets(rule: Any, event: Any, transform_input: bool = True) -> None:
        obj = (event.get("detail") or {}).get("object") if isinstance(event, dict) else None
        if (event.get("source") == "aws.s3" and isinstance(obj, dict)
                and obj.get("sequencer") == MOTO_CONSTANT_SEQUENCER):
            with lock:
                # Stamped in place: the next rule that gets this event sees the same value.
                obj["sequencer"] = f"{next(counter):016X}"
        original(rule, event, transform_input)

    setattr(Rule, "send_to_targets", send_to_targets)  # noqa: B010
