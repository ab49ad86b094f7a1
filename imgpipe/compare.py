"""`imgpipe results compare`: two models' records for one prefix, side by side.

Both models' records are read from the predictions table (keyed by image and `name@version`,
so they live side by side) with the scan reconcile and report use. Only images classified by
both count; the rest is counted apart. What a person needs to judge a switch:

- how often the top-1 labels agree;
- the labels that changed most: for each label, the images A gave it and B did not (lost)
  and the other way round (gained), and the most frequent A -> B changes;
- the images where they disagree most: different top-1, ordered by the lower of the two
  models' scores, so the first rows are those where both are sure and still differ.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from pipeline.records import PredictionRecord

__all__ = ["Comparison", "LabelChange", "compare_records", "read_and_compare"]


@dataclass(frozen=True)
class LabelChange:
    label: str
    a: int  # images A labels so
    b: int  # images B labels so
    lost: int  # A said it, B said something else
    gained: int  # B said it, A said something else


@dataclass(frozen=True)
class Disagreement:
    image: str
    a_label: str
    a_score: float
    b_label: str
    b_score: float


@dataclass(frozen=True)
class Comparison:
    prefix: str
    model_a: str
    model_b: str
    both: int  # images classified by both
    agree: int  # ... with the same top-1 label
    only_a: int  # classified by A only (B has no record, or not a classified one)
    only_b: int
    labels: tuple[LabelChange, ...]
    changes: tuple[tuple[str, str, int], ...]  # (A's label, B's label, images), most first
    disagreements: tuple[Disagreement, ...]

    @property
    def agreement(self) -> float | None:
        return self.agree / self.both if self.both else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix, "model_a": self.model_a, "model_b": self.model_b,
            "both": self.both, "agree": self.agree, "agreement": self.agreement,
            "only_a": self.only_a, "only_b": self.only_b,
            "labels": [vars(c) for c in self.labels],
            "changes": [{"a": a, "b": b, "images": n} for a, b, n in self.changes],
            "disagreements": [vars(d) for d in self.disagreements],
        }


def compare_records(prefix: str, model_a: str, model_b: str, a: list[PredictionRecord],
                    b: list[PredictionRecord], limit: int = 10) -> Comparison:
    def classified(records: list[PredictionRecord]) -> dict[str, PredictionRecord]:
        return {r.image: r for r in records
                if r.status == "classified" and r.label is not None and r.score is not None}

    by_a, by_b = classified(a), classified(b)
    shared = sorted(set(by_a) & set(by_b))
    agree = 0
    count_a: Counter[str] = Counter()
    count_b: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    gained: Counter[str] = Counter()
    changes: Counter[tuple[str, str]] = Counter()
    disagreements: list[Disagreement] = []
    for image in shared:
        ra, rb = by_a[image], by_b[image]
        la, lb = str(ra.label), str(rb.label)
        count_a[la] += 1
        count_b[lb] += 1
        if la == lb:
            agree += 1
            continue
        lost[la] += 1
        gained[lb] += 1
        changes[(la, lb)] += 1
        disagreements.append(Disagreement(image, la, float(ra.score or 0), lb,
                                          float(rb.score or 0)))
    labels = sorted(
        (LabelChange(label, count_a[label], count_b[label], lost[label], gained[label])
         for label in set(lost) | set(gained)),
        key=lambda c: (-(c.lost + c.gained), c.label))
    disagreements.sort(key=lambda d: (-min(d.a_score, d.b_score), d.image))
    return Comparison(
        prefix=prefix, model_a=model_a, model_b=model_b, both=len(shared), agree=agree,
        only_a=len(set(by_a) - set(by_b)), only_b=len(set(by_b) - set(by_a)),
        labels=tuple(labels[:limit]),
        changes=tuple((la, lb, n) for (la, lb), n in
                      sorted(changes.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]),
        disagreements=tuple(disagreements[:limit]),
    )


def read_and_compare(ddb: Any, table: str, prefix: str, model_a: str, model_b: str,
                     limit: int = 10) -> Comparison:
    """Scan the table for both models' records under `prefix` (an s3:// URI) and compare."""
    from imgpipe.reconcile import reading, scan_records

    records: dict[str, list[PredictionRecord]] = {}
    with reading(f"table {table!r}", "check --table (or IMGPIPE_TABLE), --endpoint-url and "
                 "--region"):
        for model in (model_a, model_b):
            records[model] = list(scan_records(ddb, table, prefix, model))
    return compare_records(prefix, model_a, model_b, records[model_a], records[model_b], limit)


def format_comparison(c: Comparison) -> list[str]:
    lines = [f"{c.prefix}: {c.both} image(s) classified by both {c.model_a} (A) and "
             f"{c.model_b} (B); {c.only_a} by A only, {c.only_b} by B only"]
    if not c.both:
        return lines
    lines.append(f"top-1 agreement: {c.agree} of {c.both} ({100 * c.agree / c.both:.1f} %)")
    if c.labels:
        width = max(len(x.label) for x in c.labels)
        lines.append("labels that changed most (images: A, B, lost by B, gained by B):")
        for x in c.labels:
            lines.append(f"  {x.label.ljust(width)}  {x.a:>5} {x.b:>5} {x.lost:>5} {x.gained:>5}")
    if c.changes:
        lines.append("most frequent changes (A -> B):")
        for la, lb, n in c.changes:
            lines.append(f"  {la} -> {lb}: {n}")
    if c.disagreements:
        width = max(len(d.image) for d in c.disagreements)
        lines.append("images where they disagree most (both sure, different labels):")
        for d in c.disagreements:
            lines.append(f"  {d.image.ljust(width)}  A: {d.a_label} {d.a_score:.3f}   "
                         f"B: {d.b_label} {d.b_score:.3f}")
    return lines
