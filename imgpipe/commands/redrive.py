"""`imgpipe redrive`: move the DLQ's messages back to the ingest queue."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imgpipe.commands import add_aws_options, settings_from

HELP = "move messages from the dead-letter queue back to the ingest queue"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "redrive", help=HELP,
        description=HELP + ". Receives from the DLQ in batches of 10 (sent on in batches of "
        "at most 256 KiB), sends each body and its "
        "message attributes to the queue, and deletes from the DLQ only what was sent. This "
        "receive/send loop works everywhere, including `imgpipe local` (whose emulator has "
        "no StartMessageMoveTask); on AWS the console's or the CLI's "
        "`aws sqs start-message-move-task` does the same. Fix the cause first: a message "
        "that still fails comes back to the DLQ after maxReceiveCount receives.",
    )
    p.add_argument("--queue", default="imgpipe-ingest", metavar="NAME_OR_URL",
                   help="the source queue to move messages to (default: imgpipe-ingest)")
    p.add_argument("--dlq", default=None, metavar="NAME_OR_URL",
                   help="the dead-letter queue (default: <queue name>-dlq)")
    p.add_argument("--max", type=int, default=None, metavar="N",
                   help="move at most N messages (default: all)")
    p.add_argument("--dry-run", action="store_true",
                   help="only say how many messages the DLQ holds; move nothing")
    add_aws_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from imgpipe.reconcile import queue_depth
    from imgpipe.redrive import RedriveError, in_flight, redrive, resolve_queue_url

    if args.max is not None and args.max < 0:
        print("imgpipe redrive: --max must be >= 0", file=sys.stderr)
        return 2
    from pipeline.aws import client_for

    sqs = client_for("sqs", settings_from(args))
    queue_url = resolve_queue_url(sqs, args.queue)
    dlq_url = resolve_queue_url(sqs, args.dlq or queue_url.rstrip("/").rsplit("/", 1)[-1]
                                + "-dlq")
    if args.dry_run:
        depth = queue_depth(sqs, dlq_url)
        would = depth if args.max is None else min(depth, args.max)
        print(f"dry run: {dlq_url} holds about {depth} message(s); would move {would} "
              f"to {queue_url}")
        return 0

    def moved(message: Any) -> None:
        print(f"moved {message['MessageId']}  {_preview(message['Body'])}", flush=True)

    try:
        count = redrive(sqs, dlq_url, queue_url, args.max, on_moved=moved)
    except RedriveError as e:
        print(f"imgpipe redrive: {e}", file=sys.stderr)
        return 1
    print(f"moved {count} message(s) from {dlq_url} to {queue_url}")
    hidden = 0 if args.max is not None and count >= args.max else in_flight(sqs, dlq_url)
    if hidden:
        # Received by someone (another redrive, a console's poll) and not visible until
        # their visibility timeout passes: not moved, and not to be reported as done.
        print(f"imgpipe redrive: {hidden} more message(s) in {dlq_url} are in flight "
              f"(received and not yet visible again), so they were not moved: run "
              f"imgpipe redrive again once their visibility timeout has passed",
              file=sys.stderr)
        return 1
    return 0


def _preview(body: str, width: int = 80) -> str:
    text = " ".join(body.split())
    return text if len(text) <= width else text[:width - 3] + "..."
