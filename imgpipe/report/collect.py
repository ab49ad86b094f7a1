"""The report's data: records of one model under one prefix, and a small thumbnail each.

Thumbnails are JPEGs of at most `THUMB_SIZE` pixels a side (a few KB), named after the
image's URI and ETag, so a second report into the same folder reads only what changed.
The data is written compactly (labels interned, rows as arrays): 10,000 images make a
data file of about 1 MB, loaded once; the page draws the grid in slices as it scrolls.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

from pipeline.records import PredictionRecord

__all__ = ["ReportData", "build_report", "make_thumbnail", "THUMB_SIZE", "visible"]

THUMB_SIZE = 160
THUMB_QUALITY = 70
TOP_LABELS = 3
STATIC = Path(__file__).resolve().parent / "static"
# Invisible characters that reorder the text around them (the bidirectional embeddings,
# overrides and isolates, and the marks): "photo<U+202E>gpj.exe" displays as
# "photoexe.jpg". The report shows each as its code point instead.
_BIDI_CONTROLS = {c: f"<U+{c:04X}>" for c in (
    *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def visible(text: str) -> str:
    """`text` with every bidirectional control character shown as `<U+XXXX>`."""
    return text.translate(_BIDI_CONTROLS)


@dataclass(frozen=True)
class ReportData:
    """What `build_report` wrote, for the command to print."""

    index: Path
    images: int
    counts: dict[str, int]
    thumbnails: int  # images with a thumbnail
    fetched: int  # thumbnails made in this run (the rest were already there)


def make_thumbnail(data: bytes, max_pixels: int = 40_000_000) -> bytes | None:
    """A JPEG of at most THUMB_SIZE a side, EXIF orientation applied; None when the data
    is no image Pillow can read within `max_pixels`."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                return None
            img.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))  # JPEG: decode at 1/2..1/8
            small = ImageOps.exif_transpose(img)
            small.thumbnail((THUMB_SIZE, THUMB_SIZE))
            out = io.BytesIO()
            small.convert("RGB").save(out, "JPEG", quality=THUMB_QUALITY, optimize=True)
            return out.getvalue()
    except Exception:  # noqa: BLE001 - a picture that will not shrink gets a placeholder
        return None


def thumb_name(record: PredictionRecord) -> str:
    digest = hashlib.sha256(f"{record.image}\n{record.etag or ''}".encode()).hexdigest()
    return f"thumbs/{digest[:24]}.jpg"


def build_report(
    records: Iterable[PredictionRecord],
    fetch: Callable[[PredictionRecord], bytes],
    out_dir: Path,
    *,
    source: str,
    model: str,
    workers: int = 8,
    other: Iterable[PredictionRecord] = (),
    other_model: str | None = None,
) -> ReportData:
    """Write the report of `records` into `out_dir`; `fetch(record)` reads an image's
    bytes (classified records only: the others are no pictures). `source` is the
    `s3://bucket/prefix` the records are of. With `other_model`, each card also shows
    that model's top labels from `other` (its records for the same prefix)."""
    rows = sorted(records, key=lambda r: r.image)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "thumbs").mkdir(exist_ok=True)

    def thumbnail(record: PredictionRecord) -> tuple[str, bool]:
        name = thumb_name(record)
        if (out_dir / name).exists():
            return name, False
        try:
            small = make_thumbnail(fetch(record))
        except Exception:  # noqa: BLE001 - deleted or unreadable since: no thumbnail
            small = None
        if small is None:
            return "", False
        (out_dir / name).write_bytes(small)
        return name, True

    pictures = [r for r in rows if r.status == "classified"]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        made = dict(zip((r.image for r in pictures), pool.map(thumbnail, pictures),
                        strict=True))

    data = report_document(rows, {k: v[0] for k, v in made.items()}, source=source,
                           model=model, other=other, other_model=other_model)
    (out_dir / "data.js").write_text(
        "window.IMGPIPE_REPORT = " + json.dumps(data, ensure_ascii=False,
                                                separators=(",", ":")) + ";\n",
        encoding="utf-8")
    for name in ("index.html", "report.css", "report.js"):
        shutil.copyfile(STATIC / name, out_dir / name)
    return ReportData(index=out_dir / "index.html", images=len(rows),
                      counts=data["counts"], thumbnails=sum(1 for n, _ in made.values() if n),
                      fetched=sum(1 for _, new in made.values() if new))


def report_document(rows: list[PredictionRecord], thumbs: dict[str, str], *, source: str,
                    model: str, other: Iterable[PredictionRecord] = (),
                    other_model: str | None = None) -> dict[str, Any]:
    """The page's data: header facts, interned labels, and one array per image:
    `[key, status, thumbnail, [[label index, score], ...top 3], error]`, and with
    `other_model` a sixth element, that model's top 3 (null: no classified record of it)."""
    prefix = source if source.endswith("/") else source.rsplit("/", 1)[0] + "/"
    labels: dict[str, int] = {}
    counts: dict[str, int] = {}
    items: list[list[Any]] = []
    theirs = {r.image: r for r in other if r.status == "classified"}
    both = agree = 0
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
        top = [[labels.setdefault(t.label, len(labels)), t.score]
               for t in r.top_k[:TOP_LABELS]]
        key = r.image[len(prefix):] if r.image.startswith(prefix) else r.image
        item: list[Any] = [visible(key), r.status, thumbs.get(r.image, ""), top,
                           visible(r.error or "")]
        if other_model:
            b = theirs.get(r.image)
            item.append(None if b is None else [[labels.setdefault(t.label, len(labels)), t.score]
                                                for t in b.top_k[:TOP_LABELS]])
            if b is not None and r.status == "classified":
                both += 1
                agree += b.label == r.label
        items.append(item)
    times = sorted(r.processed_at for r in rows)
    compared = ({"model_b": other_model, "both": both, "agree": agree} if other_model else {})
    return {
        **compared,
        "source": visible(source),
        "model": model,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "first": times[0] if times else None,
        "last": times[-1] if times else None,
        "counts": counts,
        "timings": _median_timings(rows),
        "labels": list(labels),
        "items": items,
    }


def _median_timings(rows: list[PredictionRecord]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in ("fetch_ms", "decode_ms", "inference_ms", "event_to_record_ms"):
        values = [float(v) for r in rows if (v := getattr(r, name)) is not None]
        if values:
            out[name] = round(median(values), 1)
    return out
