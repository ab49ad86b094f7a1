"""`imgpipe report s3://BUCKET/PREFIX --out DIR`: a static page of the results, offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgpipe.commands import add_aws_options, settings_from
from pipeline.errors import ImgpipeError

if TYPE_CHECKING:
    from imgpipe.report import ReportData

HELP = "write a static HTML report (thumbnails, labels, charts) of the results under a prefix"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report", help=HELP,
        description=HELP + ". Reads the model's records for the prefix (a table scan) and "
        "one small thumbnail per classified image (kept in DIR/thumbs and reused by the next "
        "report into DIR). Open DIR/index.html in a browser: no server, no network. Works on "
        "AWS, or on `imgpipe local` with --endpoint-url / AWS_ENDPOINT_URL.",
    )
    p.add_argument("uri", metavar="s3://BUCKET/PREFIX", help="the images to report on")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="folder to write index.html, data.js and thumbs/ into")
    p.add_argument("--model", default="", metavar="NAME@VERSION",
                   help="model id (default: the packaged model's)")
    p.add_argument("--compare-with", default="", metavar="NAME@VERSION",
                   help="a second model: each image shows its top labels too, and the "
                   "header their top-1 agreement (as `imgpipe results compare`)")
    p.add_argument("--table", default=None,
                   help="table name (default: IMGPIPE_TABLE or imgpipe-predictions)")
    p.add_argument("--workers", type=int, default=8, metavar="N",
                   help="concurrent S3 reads for thumbnails (default 8)")
    add_aws_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.keys import parse_s3_uri
    from pipeline.modelstore import model_id_of

    try:
        bucket, prefix = parse_s3_uri(args.uri, require_key=False)
    except ValueError as e:
        print(f"imgpipe report: {e}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("imgpipe report: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"imgpipe report: --out {args.out} is a file; give a folder (it is created "
              "if missing) to write index.html, data.js and thumbs/ into", file=sys.stderr)
        return 2
    from pipeline.aws import create_clients

    settings = settings_from(args, table_name=args.table)
    clients = create_clients(settings)
    model = args.model or model_id_of()
    other = args.compare_with
    if other and "@" not in other:
        try:
            other = model_id_of(other)
        except ImgpipeError as e:
            print(f"imgpipe report: --compare-with: {e}", file=sys.stderr)
            return 2
    from imgpipe.reconcile import reading

    # A bucket that does not exist would give an empty report and exit 0.
    with reading(f"bucket {bucket!r}", "check its name (`aws s3 ls` lists your buckets), "
                 "--endpoint-url and --region; no report written"):
        clients.s3.head_bucket(Bucket=bucket)
    try:
        result = write_report(clients.s3, clients.dynamodb, bucket, prefix, model,
                              settings.table_name, args.out, args.workers, other or None)
    except OSError as e:  # a parent that is a file, no permission, a full disk...
        where = e.filename or args.out
        print(f"imgpipe report: cannot write the report into {args.out} ({where}: "
              f"{e.strerror or e})", file=sys.stderr)
        return 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items())) or "no records"
    beside = f" beside {other}" if other else ""
    print(f"report of s3://{bucket}/{prefix} with {model}{beside}: {result.images} image(s) "
          f"({counts}), {result.thumbnails} thumbnail(s) ({result.fetched} new)")
    print(f"open {result.index.resolve()}")
    return 0


def write_report(s3: Any, ddb: Any, bucket: str, prefix: str, model: str, table: str,
                 out: Path, workers: int = 8, other_model: str | None = None) -> ReportData:
    """Read the records (and `other_model`'s, to show beside them) and write the report;
    shared with `imgpipe demo`."""
    from imgpipe.reconcile import reading, scan_records
    from imgpipe.report import build_report

    with reading(f"table {table!r}", "check --table (or IMGPIPE_TABLE), --endpoint-url and "
                 "--region"):
        records = list(scan_records(ddb, table, f"s3://{bucket}/{prefix}", model))
        other = (list(scan_records(ddb, table, f"s3://{bucket}/{prefix}", other_model))
                 if other_model else [])

    def fetch(record: Any) -> bytes:
        key = record.image[len(f"s3://{bucket}/"):]
        extra = {"IfMatch": f'"{record.etag}"'} if record.etag else {}
        return bytes(s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read())

    return build_report(records, fetch, out, source=f"s3://{bucket}/{prefix}", model=model,
                        workers=workers, other=other, other_model=other_model)
