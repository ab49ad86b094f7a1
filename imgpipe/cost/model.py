"""The bill of one scenario, line by line, from per-image CPU time and list prices.

Lambda gives a function CPU in proportion to its memory (one vCPU at 1,769 MB, at most
six), and bills memory x duration: so the compute cost of a CPU-bound image is nearly the
same at every memory size, and memory buys latency, not savings. The model assumes that
proportion holds for this pipeline beyond the CPUs the benchmark ran on (unmeasured), and
the same CPU time per image on arm64 as on the x86_64 machine that measured it.

Duration is what Lambda bills, and a function also makes requests (to S3 and DynamoDB:
the SDK's CPU, and the waiting): the billed duration per image is the CPU time over the
function's vCPUs plus the requests' time the benchmark measured (`PhotoCost.billed`: billed
duration under AWS-like latency at 1 vCPU less the core's CPU time), which more memory is
taken not to shorten. Without that measurement it is taken as none, and the command says
so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgpipe.cost.inputs import PhotoCost
from pipeline.errors import ConfigError

__all__ = ["Bill", "Line", "Prices", "Scenario", "bill_for", "load_prices", "PRICES_PATH",
           "MB_PER_VCPU", "cpu_time_compute", "instance_comparison"]

PRICES_PATH = Path(__file__).resolve().parent / "prices.json"
MB_PER_VCPU = 1769  # Lambda: one vCPU's worth of CPU at 1,769 MB
MAX_VCPUS = 6
ITEM_KB = 1  # a record (top 5 labels, timings, keys) is under 1 KB: one write unit
LOG_BYTES_PER_IMAGE = 400  # one structured log line per outcome
HOURS_PER_MONTH = 730
INSTANCE_VCPUS = 2


@dataclass(frozen=True)
class Prices:
    as_listed_on: str
    region: str
    source: str
    usd: Mapping[str, float]
    quoted: Mapping[str, str]
    origin: Mapping[str, str]  # where each price came from ("issue 12", "recalled", "you")

    def __getitem__(self, name: str) -> float:
        return self.usd[name]

    def with_overrides(self, overrides: Mapping[str, float]) -> Prices:
        unknown = sorted(set(overrides) - set(self.usd))
        if unknown:
            raise ConfigError(f"unknown price {unknown[0]!r}: the names are "
                              f"{', '.join(sorted(self.usd))}")
        return replace(self, usd={**self.usd, **overrides},
                       quoted={**self.quoted, **{k: f"${v:g} per unit (yours)"
                                                for k, v in overrides.items()}},
                       origin={**self.origin, **dict.fromkeys(overrides, "you")})


def load_prices(path: Path | None = None) -> Prices:
    path = path or PRICES_PATH
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc["prices"]
        return Prices(as_listed_on=str(doc["as_listed_on"]), region=str(doc["region"]),
                      source=str(path),
                      usd={k: float(v["usd"]) for k, v in entries.items()},
                      quoted={k: str(v.get("quoted", "")) for k, v in entries.items()},
                      origin={k: str(v.get("source", "?")) for k, v in entries.items()})
    except FileNotFoundError:
        raise ConfigError(f"no prices file at {path}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path}: not a prices file ({e}); see {PRICES_PATH} for the "
                          "format") from None


@dataclass(frozen=True)
class Scenario:
    photo: PhotoCost
    arch: str = "x86_64"  # or arm64
    memory_mb: int = 2048
    images: int = 1_000_000
    batch_size: int = 16  # SQS messages (one image each) per ingest invocation
    output_documents: str = "per-image"  # or batch, none
    route: str = "ingest"  # ingest (S3 -> SQS -> Lambda) or backfill (Step Functions)
    backfill_batch: int = 64
    cpu_ms_per_image: float | None = None  # overrides the benchmark's figure
    wait_ms_per_image: float | None = None  # overrides the benchmark's billed-duration rows

    @property
    def cpu_ms(self) -> float:
        return self.cpu_ms_per_image if self.cpu_ms_per_image is not None \
            else self.photo.cpu_ms_per_image

    @property
    def wait_ms(self) -> float | None:
        """Billed time per image beyond the CPU time, or None when nothing measured it."""
        if self.wait_ms_per_image is not None:
            return self.wait_ms_per_image
        measured = self.photo.billed.get(self.route)
        return measured.wait_ms if measured is not None else None

    @property
    def billed_ms(self) -> float:
        """Billed duration per image: the CPU time over the vCPUs, plus the waiting."""
        return self.cpu_ms / self.vcpus + (self.wait_ms or 0.0)

    @property
    def vcpus(self) -> float:
        return min(MAX_VCPUS, self.memory_mb / MB_PER_VCPU)

    @property
    def batch_seconds(self) -> float:
        """Duration of one ingest invocation's batch (its billed duration)."""
        return self.batch_size * self.billed_ms / 1000

    @property
    def invocations(self) -> int:
        per = self.batch_size if self.route == "ingest" else self.backfill_batch
        return math.ceil(self.images / per)


@dataclass(frozen=True)
class Line:
    name: str
    quantity: float
    unit: str
    usd: float
    price: str  # the price key


@dataclass(frozen=True)
class Bill:
    scenario: Scenario
    lines: tuple[Line, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total(self) -> float:
        return sum(line.usd for line in self.lines)

    @property
    def dominant(self) -> Line:
        return max(self.lines, key=lambda line: line.usd)

    def share(self, line: Line) -> float:
        return line.usd / self.total if self.total else 0.0


def bill_for(s: Scenario, prices: Prices) -> Bill:
    """Every per-image line of the bill for `s.images` images (idle costs, storage and the
    user's own uploads aside)."""
    if s.arch not in ("x86_64", "arm64"):
        raise ConfigError(f"architecture {s.arch!r}: x86_64 or arm64")
    if not 128 <= s.memory_mb <= 10240:
        raise ConfigError(f"memory {s.memory_mb} MB: Lambda allows 128 to 10240 MB")
    if s.output_documents not in ("per-image", "batch", "none"):
        raise ConfigError(f"output documents {s.output_documents!r}: per-image, batch or none")
    n = s.images
    gb_s = n * s.billed_ms / 1000 * s.memory_mb / 1024
    lines = [
        Line(f"Lambda compute, {s.arch}, {s.memory_mb} MB", gb_s, "GB-s",
             gb_s * prices[f"lambda_gb_s_{s.arch}"], f"lambda_gb_s_{s.arch}"),
        Line("Lambda requests", s.invocations, "invocations",
             s.invocations * prices["lambda_request"], "lambda_request"),
    ]
    if s.route == "ingest":
        # S3's notification sends one message an image; Lambda's poller receives and
        # deletes them a batch at a time.
        sqs = n + 2 * s.invocations
        lines.append(Line("SQS requests (send, receive, delete)", sqs, "requests",
                          sqs * prices["sqs_request"], "sqs_request"))
    else:
        lists = math.ceil(n / 1000)
        # AWS bills the parent one state transition for each child a Distributed Map
        # starts (concepts-transitions.html), plus the parent's own few states; the
        # children are EXPRESS: a request each, and their duration (the batch's Lambda
        # call) in 64 MB chunks, the smallest, as a child holds one batch of keys (its
        # rounding up to 100 ms steps is left out: under 0.1 s a child).
        transitions = s.invocations + 8
        lines.append(Line("S3 LIST (the backfill's listing)", lists, "requests",
                          lists * prices["s3_put"], "s3_put"))
        lines.append(Line("Step Functions transitions (one a child)", transitions,
                          "transitions", transitions * prices["sfn_transition"],
                          "sfn_transition"))
        child_s = s.backfill_batch * s.billed_ms / 1000
        express_gb_s = s.invocations * child_s * 64 / 1024
        lines.append(Line("Step Functions Express children (requests)", s.invocations,
                          "executions", s.invocations * prices["sfn_express_request"],
                          "sfn_express_request"))
        lines.append(Line("Step Functions Express children (duration)", express_gb_s,
                          "GB-s", express_gb_s * prices["sfn_express_gb_s"],
                          "sfn_express_gb_s"))
    writes = n * 2 * ITEM_KB
    lines.append(Line("DynamoDB writes (table + by-label index)", writes, "write units",
                      writes * prices["dynamodb_write_unit"], "dynamodb_write_unit"))
    # Consistent reads: the done-already check, and with per-image documents the check of
    # the record after the document is written (a projection, billed on the item's size).
    reads = n * (2 if s.output_documents == "per-image" else 1)
    lines.append(Line("DynamoDB reads (done-already" + (" + record checks)" if
                      s.output_documents == "per-image" else " check)"), reads,
                      "read units", reads * prices["dynamodb_read_unit"],
                      "dynamodb_read_unit"))
    lines.append(Line("S3 GET (the photo)", n, "requests", n * prices["s3_get"], "s3_get"))
    puts = {"per-image": n, "batch": s.invocations, "none": 0}[s.output_documents]
    if puts:
        lines.append(Line(f"S3 PUT (output documents, {s.output_documents})", puts,
                          "requests", puts * prices["s3_put"], "s3_put"))
    log_gb = n * LOG_BYTES_PER_IMAGE / 1e9
    lines.append(Line("CloudWatch Logs (one line an image)", log_gb, "GB",
                      log_gb * prices["logs_ingest_gb"], "logs_ingest_gb"))
    return Bill(scenario=s, lines=tuple(lines))


def cpu_time_compute(s: Scenario, prices: Prices) -> tuple[float, float]:
    """(GB-s, USD) of the compute line if Lambda billed CPU time only: shown beside the
    billed duration."""
    gb_s = s.images * s.cpu_ms / 1000 / s.vcpus * s.memory_mb / 1024
    return gb_s, gb_s * prices[f"lambda_gb_s_{s.arch}"]


@dataclass(frozen=True)
class InstanceComparison:
    instances: int
    images_per_s: float  # one instance's capacity at full CPU
    monthly_usd: float
    per_million_usd: float  # compute only, at the given monthly volume


def instance_comparison(s: Scenario, prices: Prices, images_per_month: int) -> InstanceComparison:
    """Always-on 2-vCPU instances enough for `images_per_month` at the average rate,
    each busy at most half the time (bursts), at least one."""
    capacity = INSTANCE_VCPUS * 1000 / s.cpu_ms
    needed = images_per_month / (HOURS_PER_MONTH * 3600)
    count = max(1, math.ceil(needed / (capacity * 0.5)))
    monthly = count * HOURS_PER_MONTH * prices[f"instance_hour_{s.arch}"]
    return InstanceComparison(count, capacity, monthly,
                              monthly / (images_per_month / 1e6) if images_per_month else 0.0)


def as_dict(bill: Bill) -> dict[str, Any]:
    return {"total_usd": round(bill.total, 4), "dominant": bill.dominant.name,
            "lines": [{"name": line.name, "quantity": line.quantity, "unit": line.unit,
                       "usd": round(line.usd, 4), "share": round(bill.share(line), 4),
                       "price": line.price} for line in bill.lines]}
