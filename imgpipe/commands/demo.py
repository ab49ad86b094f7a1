"""`imgpipe demo`: start the stack, upload the sample photos, wait for every record, print."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from imgpipe.commands.local import (
    activate_lines,
    add_stack_options,
    print_batch,
    stack_options,
)

HELP = "one command: start the embedded stack, upload the sample photos, print the results"

ROOT = Path(__file__).resolve().parents[2]


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help=HELP, description=HELP + ", stop.")
    add_stack_options(p, default_port=0)
    p.add_argument("--samples", type=Path, default=ROOT / "samples",
                   help="folder of photos to upload (default: the repo's samples/)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for every record (default 60)")
    p.add_argument("--report", type=Path, default=Path("build/demo-report"), metavar="DIR",
                   help="where to write the results' HTML report (default: %(default)s)")
    p.set_defaults(run=run)


def demo_uploads(samples: Path, prefix: str) -> list[tuple[str, bytes]]:
    """(key, bytes) for the demo: the photos plus the awkward cases users hit on day one."""
    photos = sorted(p for p in samples.iterdir() if p.suffix.lower() in (".jpg", ".jpeg",
                                                                          ".png"))
    if not photos:
        raise SystemExit(f"imgpipe demo: no photos in {samples}")
    uploads: list[tuple[str, bytes]] = []
    for i, path in enumerate(photos):
        data = path.read_bytes()
        if i == 0:
            key = f"{prefix}holiday photos/café {path.stem}.jpg"  # space + non-ASCII
        elif i == 1:
            key = f"{prefix}{path.stem.upper()}.JPG"  # upper-case extension
        else:
            key = f"{prefix}{path.name}"
        uploads.append((key, data))
    uploads.append((f"{prefix}notes/readme.txt",
                    b"These are holiday notes, not a photo.\n"))
    return uploads


def run(args: argparse.Namespace) -> int:
    from imgpipe.local.stack import LocalStack, free_port
    from pipeline.modelstore import model_id_of

    if not args.port:
        args.port = free_port()
    options = stack_options(args)
    if not args.verbose:  # the results table says it all; rejects are in it
        options = dataclasses.replace(options, log_level="ERROR")
    started = time.monotonic()
    print(f"starting the embedded stack on 127.0.0.1:{args.port} ...", flush=True)
    with LocalStack(options, on_batch=print_batch if args.verbose else None) as stack:
        r = stack.resources
        assert r is not None
        model = model_id_of(args.model)
        print(f"stack ready in {time.monotonic() - started:.1f} s; uploading to "
              f"s3://{r.bucket}/{r.input_prefix}", flush=True)
        s3 = stack.client("s3")
        uploads = demo_uploads(args.samples, r.input_prefix)
        for key, data in uploads:
            s3.put_object(Bucket=r.bucket, Key=key, Body=data)
            print(f"  uploaded s3://{r.bucket}/{key} ({len(data):,} bytes)", flush=True)
        images = [f"s3://{r.bucket}/{key}" for key, _ in uploads]

        shown = [-1]
        tty = sys.stdout.isatty()

        def progress(done: int, total: int) -> None:
            if done == shown[0]:
                return  # a log file gets one line per change, a terminal one updated line
            shown[0] = done
            print(f"\r  records: {done}/{total}" if tty else f"  records: {done}/{total}",
                  end="" if tty else "\n", flush=True)

        records = stack.wait_for_records(images, model, args.timeout, progress)
        if tty:
            print()
        _print_results([records[i] for i in images], model)
        from imgpipe.commands.report import write_report

        report = write_report(s3, stack.client("dynamodb"), r.bucket, r.input_prefix, model,
                              r.table, args.report)
        elapsed = time.monotonic() - started
        classified = sum(1 for rec in records.values() if rec.status == "classified")
        print(f"\n{classified} classified, {len(records) - classified} rejected, "
              f"in {elapsed:.1f} s. The demo's stack stops now; `imgpipe local` runs the same "
              "stack for the aws CLI and the upload page"
              + "".join(f" (`{line}` first: it has imgpipe and aws)"
                        for line in activate_lines()) + ".")
        print(f"report: {report.index.resolve()} (open it in a browser; `imgpipe report` "
              "writes one for any prefix)")
    return 0


def _print_results(records: list[Any], model: str) -> None:
    rows = []
    for rec in records:
        if rec.status == "classified":
            rows.append((rec.image, rec.status, str(rec.label), f"{rec.score:.3f}"))
        else:
            rows.append((rec.image, rec.status, rec.error or "", ""))
    headers = ("IMAGE", "STATUS", "LABEL / ERROR", "SCORE")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(f"\nresults (model {model}):")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
