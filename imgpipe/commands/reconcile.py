"""`imgpipe reconcile`: one record per object, outputs equal classified records, DLQ empty."""

from __future__ import annotations

import argparse
import json
from typing import Any

from imgpipe.commands import add_aws_options, settings_from

HELP = "check that objects, records, output documents and the DLQ agree"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reconcile", help=HELP,
        description=HELP + ": every object under the input prefix has exactly one record for "
        "the model with the object's current ETag, every classified record has its output "
        "document and every output document its record, and the DLQ is empty. Reads "
        "listings and a table scan only. Exit 0 when everything agrees, 1 otherwise (one "
        "line per kind of problem). Works on AWS, or on `imgpipe local` with --endpoint-url "
        "/ AWS_ENDPOINT_URL.",
    )
    p.add_argument("--bucket", default="imgpipe-local", help="the bucket (default: %(default)s)")
    p.add_argument("--input-prefix", default=None,
                   help="where photos go (default: IMGPIPE_INPUT_PREFIX or incoming/)")
    p.add_argument("--output-prefix", default=None,
                   help="where results go (default: IMGPIPE_OUTPUT_PREFIX or predictions/)")
    p.add_argument("--table", default=None,
                   help="table name (default: IMGPIPE_TABLE or imgpipe-predictions)")
    p.add_argument("--model", default="", metavar="NAME@VERSION",
                   help="model id (default: the packaged model's)")
    p.add_argument("--queue", default="imgpipe-ingest", metavar="NAME_OR_URL",
                   help="the ingest queue, to tell missing from still queued "
                   "(default: %(default)s; '' to skip the queue checks)")
    p.add_argument("--dlq", default=None, metavar="NAME_OR_URL",
                   help="the dead-letter queue (default: <queue name>-dlq)")
    add_aws_options(p)
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from imgpipe.reconcile import reading, reconcile
    from imgpipe.redrive import resolve_queue_url
    from pipeline.aws import client_for, create_clients
    from pipeline.modelstore import model_id_of

    settings = settings_from(args, table_name=args.table, input_prefix=args.input_prefix,
                             output_prefix=args.output_prefix)
    model = args.model or model_id_of()
    clients = create_clients(settings)
    sqs = queue_url = dlq_url = None
    if args.queue:
        sqs = client_for("sqs", settings)
        with reading(f"queue {args.queue!r}", "check --queue and --dlq ('' skips the queue "
                     "checks), --endpoint-url and --region"):
            queue_url = resolve_queue_url(sqs, args.queue)
            dlq_url = resolve_queue_url(
                sqs, args.dlq or queue_url.rstrip("/").rsplit("/", 1)[-1] + "-dlq")
    report = reconcile(
        clients.s3, clients.dynamodb, bucket=args.bucket,
        input_prefix=settings.input_prefix, output_prefix=settings.output_prefix,
        table=settings.table_name, model=model, queue_url=queue_url, dlq_url=dlq_url,
        sqs_client=sqs, output_bucket=settings.output_bucket or None,
    )
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
        return 0 if report.ok else 1
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(report.statuses.items())) or "none"
    print(f"s3://{report.bucket}/{report.input_prefix} with {report.model} "
          f"(table {settings.table_name}):")
    print(f"  {report.objects} object(s) under {report.input_prefix}, {report.records} "
          f"record(s) of them ({statuses}), {report.outputs} output document(s) of them")
    if report.other_records or report.other_outputs:
        print(f"  elsewhere in the bucket: {report.other_records} record(s) and "
              f"{report.other_outputs} output document(s) of {report.model} (other prefixes, "
              "e.g. backfills; checked against documents, not against objects)")
    if report.queue_depth is not None:
        print(f"  queue: {report.queue_depth} message(s); DLQ: {report.dlq_depth} message(s)")
    if report.deleted_objects:
        print(f"  note: {len(report.deleted_objects)} record(s) of deleted objects (kept, no "
              f"problem): {_examples(report.deleted_objects)}")
    for kind, count, examples, meaning in report.problems():
        print(f"{kind}: {count} {meaning}" + (f": {_examples(examples, count)}"
                                              if examples else ""))
    if report.ok and report.empty:
        print(f"empty: no objects under s3://{report.bucket}/{report.input_prefix} and no "
              f"records of {report.model}, so there is nothing to compare (a local stack "
              "started without --state-dir starts empty)")
    else:
        print("ok: everything agrees" if report.ok else
              f"NOT OK: {len(report.problems())} kind(s) of problem")
    return 0 if report.ok else 1


def _examples(items: tuple[str, ...], total: int | None = None) -> str:
    shown = ", ".join(items[:5])
    more = (total if total is not None else len(items)) - min(len(items), 5)
    return shown + (f" (+{more} more)" if more > 0 else "")
