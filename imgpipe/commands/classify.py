"""`imgpipe classify FILE...`: classify local files, no AWS involved."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = "classify image files on this machine (no AWS)"

# What a directory contributes; a file named on the command line is tried whatever its name.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "classify",
        help=HELP,
        description=HELP + ". Exit 0 when every file was classified, 1 when any was "
        "rejected (after printing all of them), 2 on usage errors.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="image files (JPEG, PNG, WebP, "
                   "GIF, BMP, TIFF; any other file named is reported as rejected) or "
                   "directories, whose images are classified recursively (by extension: "
                   + ", ".join(IMAGE_SUFFIXES) + "). URLs are not supported")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line: file, status, label, score, top_k, error")
    p.add_argument("--model", default="", metavar="SOURCE",
                   help="a packaged model's name (efficientnet-lite0, the default; "
                   "efficientnet-lite0-int8), a model directory, manifest.json or s3:// URI "
                   "(env IMGPIPE_MODEL)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="labels per image in --json output (default: the manifest's, 5)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="images per model call (default 16)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from pipeline.classifier import Classifier
    from pipeline.decode import DecodeLimits
    from pipeline.errors import PermanentError, too_large_message
    from pipeline.modelstore import resolve_model
    from pipeline.settings import Settings

    if args.batch_size < 1 or (args.top_k is not None and args.top_k < 1):
        print("imgpipe classify: --batch-size and --top-k must be at least 1", file=sys.stderr)
        return 2
    urls = [f for f in args.files if "://" in f]
    if urls:
        print(f"imgpipe classify: {urls[0]} is a URL; classify takes files and directories "
              "on this machine only (download it first; for photos in S3 use `imgpipe "
              "backfill s3://BUCKET/PREFIX`)", file=sys.stderr)
        return 2
    files = expand_paths(args.files)
    if not files:
        print(f"imgpipe classify: no images ({', '.join(IMAGE_SUFFIXES)}) in "
              f"{', '.join(args.files)}", file=sys.stderr)
        return 1
    settings = Settings.from_env(os.environ, model_source=args.model or None)
    manifest = resolve_model(settings.model_source, settings.model_cache_dir)
    if args.top_k:
        manifest = dataclasses.replace(manifest, top_k=args.top_k)
    limits = DecodeLimits(max_pixels=settings.max_pixels, max_bytes=settings.max_object_bytes)

    def loader(path: str) -> Any:
        def load() -> bytes:
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size > settings.max_object_bytes:  # say the file's size, read nothing
                        raise PermanentError(too_large_message(size, settings.max_object_bytes))
                    return f.read(settings.max_object_bytes + 1)
            except FileNotFoundError:
                raise PermanentError("no such file") from None
            except OSError as e:
                raise PermanentError(f"cannot read the file: {e.strerror or e}") from None

        return load

    rejected = 0
    rows: list[tuple[str, str, str, str]] = []
    with Classifier(manifest, batch_size=args.batch_size, limits=limits) as clf:
        for result in clf.classify_many((f, loader(f)) for f in files):
            pred = result.prediction
            if pred is None:
                rejected += 1
                error = str(result.error) if result.error else "unknown error"
                if not isinstance(result.error, PermanentError):
                    error = f"{type(result.error).__name__}: {error}"
            if args.json:
                doc: dict[str, Any] = {"file": result.key, "model": manifest.model_id}
                if pred is not None:
                    doc.update(status="classified", label=pred.label, score=round(pred.score, 6),
                               top_k=[{"label": t.label, "index": t.index,
                                       "score": round(t.score, 6)} for t in pred.top_k],
                               width=pred.width, height=pred.height, format=pred.format,
                               error=None)
                else:
                    doc.update(status="rejected", label=None, score=None, top_k=[],
                               error=error)
                print(json.dumps(doc, ensure_ascii=False), flush=True)
            elif pred is not None:
                rows.append((result.key, pred.label, f"{pred.score:.3f}", ""))
            else:
                rows.append((result.key, "-", "-", error))
    if not args.json:
        _print_table(rows, manifest.model_id)
    if rejected:
        print(f"imgpipe classify: {rejected} of {len(files)} file(s) rejected",
              file=sys.stderr)
        return 1
    return 0


def expand_paths(paths: list[str]) -> list[str]:
    """The files to classify: each file as named (in order), each directory's images
    (recursively, by extension, sorted; hidden files and folders left out)."""
    from pathlib import Path

    out: list[str] = []
    for name in paths:
        path = Path(name)
        if not path.is_dir():
            out.append(name)
            continue
        found = [p for p in path.rglob("*")
                 if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        out.extend(str(p) for p in sorted(found))
    return out


def _print_table(rows: list[tuple[str, str, str, str]], model_id: str) -> None:
    headers = ("FILE", "LABEL", "SCORE", "ERROR")
    show_error = any(r[3] for r in rows)
    cols = 4 if show_error else 3
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:cols])]
    print(f"model {model_id}")
    print("  ".join(h.ljust(w) for h, w in zip(headers[:cols], widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:cols], widths, strict=True)).rstrip())
