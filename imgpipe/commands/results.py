"""`imgpipe results get|query`: read the predictions table (AWS or the local stack)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from imgpipe.commands import add_aws_options, settings_from

HELP = "read predictions from the DynamoDB table (by image, by label, or two models compared)"


def register(sub: Any) -> None:
    p = sub.add_parser("results", help=HELP, description=HELP + ". Works against AWS, or "
                       "the local stack with --endpoint-url / AWS_ENDPOINT_URL.")
    rsub = p.add_subparsers(dest="results_command", metavar="ACTION", required=True)

    g = rsub.add_parser("get", help="the record of one image",
                        description="Print the record of one image (JSON).")
    g.add_argument("image", metavar="s3://BUCKET/KEY")
    _common(g)
    g.set_defaults(run=run_get)

    q = rsub.add_parser("query", help="images with a label, best score first",
                        description="List the images whose top label is LABEL (index "
                        "by-label), best score first.")
    q.add_argument("--label", required=True, help="label, e.g. espresso")
    q.add_argument("--min-score", type=float, default=None, metavar="X",
                   help="only scores >= X (0..1)")
    q.add_argument("--limit", type=int, default=None, metavar="N", help="at most N rows")
    q.add_argument("--json", action="store_true", help="one JSON record per line")
    _common(q)
    q.set_defaults(run=run_query)

    c = rsub.add_parser(
        "compare", help="two models' results for a prefix, side by side",
        description="For the images under a prefix classified by two models: how often their "
        "top-1 labels agree, the labels that changed most, and the images where they "
        "disagree most (both sure, different labels). Reads both models' records (a table "
        "scan). Exit 0 when there is something to compare, 1 when no image has a classified "
        "record of both.")
    c.add_argument("uri", metavar="s3://BUCKET/PREFIX", help="the images to compare")
    c.add_argument("--model", action="append", required=True, metavar="MODEL", dest="models",
                   help="give it twice: A (the one in use), then B; NAME@VERSION, or a "
                   "packaged model's name or a model folder (its manifest names it)")
    c.add_argument("--limit", type=int, default=10, metavar="N",
                   help="rows per list (default 10)")
    c.add_argument("--json", action="store_true", help="the comparison as one JSON object")
    c.add_argument("--table", default=None,
                   help="table name (default: IMGPIPE_TABLE or imgpipe-predictions)")
    add_aws_options(c)
    c.set_defaults(run=run_compare)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", metavar="NAME@VERSION",
                   help="model id (default: the packaged model's, efficientnet-lite0@1)")
    p.add_argument("--table", default=None,
                   help="table name (default: IMGPIPE_TABLE or imgpipe-predictions)")
    add_aws_options(p)


def _sink(args: argparse.Namespace) -> tuple[Any, str]:
    from pipeline.aws import create_clients
    from pipeline.modelstore import model_id_of
    from pipeline.table import PredictionsTable

    settings = settings_from(args, table_name=args.table)
    model = args.model or model_id_of()
    clients = create_clients(settings)
    return PredictionsTable(clients.dynamodb, settings.table_name), model


def run_get(args: argparse.Namespace) -> int:
    from pipeline.keys import parse_s3_uri

    try:
        parse_s3_uri(args.image)
    except ValueError as e:
        print(f"imgpipe results get: {e}", file=sys.stderr)
        return 2
    sink, model = _sink(args)
    record = sink.get(args.image, model)
    if record is None:
        print(f"imgpipe results get: no record for {args.image} and model {model} (not "
              f"uploaded under the input prefix yet, or still in the queue)", file=sys.stderr)
        return 1
    print(json.dumps(record.to_document(), indent=2, ensure_ascii=False))
    return 0


def run_query(args: argparse.Namespace) -> int:
    if args.min_score is not None and not 0 <= args.min_score <= 1:
        print("imgpipe results query: --min-score must be between 0 and 1", file=sys.stderr)
        return 2
    sink, model = _sink(args)
    records = sink.query_label(model, args.label, args.min_score, args.limit)
    if args.json:
        for rec in records:
            print(json.dumps(rec.to_document(), ensure_ascii=False))
        return 0
    if not records:
        print(f"no images labelled {args.label!r} by {model}"
              + (f" with score >= {args.min_score}" if args.min_score is not None else ""))
        return 0
    width = max(len(r.image) for r in records)
    print(f"{'IMAGE'.ljust(width)}  SCORE")
    for rec in records:
        print(f"{rec.image.ljust(width)}  {rec.score:.3f}")
    print(f"{len(records)} image(s) labelled {args.label!r} by {model}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from imgpipe.compare import format_comparison, read_and_compare
    from pipeline.aws import create_clients
    from pipeline.errors import ImgpipeError
    from pipeline.keys import parse_s3_uri
    from pipeline.modelstore import model_id_of

    try:
        bucket, prefix = parse_s3_uri(args.uri, require_key=False)
    except ValueError as e:
        print(f"imgpipe results compare: {e}", file=sys.stderr)
        return 2
    if len(args.models) != 2 or args.models[0] == args.models[1]:
        print("imgpipe results compare: give --model twice, two different models: --model A "
              "--model B (e.g. --model efficientnet-lite0@1 --model resnet50@1)",
              file=sys.stderr)
        return 2
    if args.limit < 1:
        print("imgpipe results compare: --limit must be at least 1", file=sys.stderr)
        return 2
    models = []
    for model in args.models:
        if "@" in model:
            models.append(model)
        elif model.startswith("s3://"):
            print(f"imgpipe results compare: --model {model}: give the model's NAME@VERSION "
                  "(the records' model; `imgpipe model publish` prints it)", file=sys.stderr)
            return 2
        else:
            try:
                models.append(model_id_of(model))
            except ImgpipeError as e:
                print(f"imgpipe results compare: {e}", file=sys.stderr)
                return 2
    settings = settings_from(args, table_name=args.table)
    clients = create_clients(settings)
    result = read_and_compare(clients.dynamodb, settings.table_name, f"s3://{bucket}/{prefix}",
                              models[0], models[1], args.limit)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        for line in format_comparison(result):
            print(line)
    if not result.both:
        print(f"imgpipe results compare: no image under {args.uri} has a classified record of "
              f"both {models[0]} and {models[1]}: classify the prefix with each (`imgpipe "
              f"backfill {args.uri} --model SOURCE`), then compare", file=sys.stderr)
        return 1
    return 0
