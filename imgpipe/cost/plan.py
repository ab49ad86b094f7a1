"""`imgpipe plan`: how many functions a run of N images needs to finish by a deadline (or how
long it takes at a given concurrency), what it costs, and which quota it meets first.

The arithmetic, for a route's batch of B images (backfill: BackfillBatchSize keys; ingest:
BatchSize messages): one image takes `cpu_ms / vCPUs` of the function's time (vCPUs =
memory / 1,769 MB, as `imgpipe cost` assumes) plus its requests' time (the SDK's CPU and
the waiting, as the benchmark measured it: `Scenario.billed_ms`), a batch B times that; the
run is
ceil(N / B) batches in waves of C at once, so it lasts ceil(batches / C) x batch seconds.
For a deadline T, C is the smallest concurrency whose waves fit: floor(T / batch seconds)
waves, C = ceil(batches / waves). Cold starts, the listing and retries are not counted.
The bill is `imgpipe cost`'s (`bill_for`), the quotas `quotas.QUOTAS`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from imgpipe.cost.model import ITEM_KB, Bill, Line, Prices, Scenario, bill_for
from imgpipe.cost.quotas import Quota, quota
from pipeline.errors import ConfigError

__all__ = ["Check", "Plan", "make_plan", "MODES", "ARCHS"]

MODES = ("per-image", "batch", "none")
ARCHS = ("x86_64", "arm64")


@dataclass(frozen=True)
class Check:
    quota: Quota
    needed: float
    limit: float
    note: str = ""

    @property
    def binds(self) -> bool:
        return self.needed > self.limit


@dataclass(frozen=True)
class Plan:
    scenario: Scenario
    batch: int  # images per invocation
    batches: int
    batch_s: float  # one invocation's duration
    concurrency: int
    waves: int
    deadline_s: float | None

    @property
    def seconds(self) -> float:
        return self.waves * self.batch_s

    @property
    def images_per_s(self) -> float:
        """The steady rate while every function is busy."""
        return min(self.concurrency, self.batches) * self.batch / self.batch_s

    @property
    def batches_per_s(self) -> float:
        return min(self.concurrency, self.batches) / self.batch_s


def make_plan(s: Scenario, *, deadline_s: float | None = None,
              concurrency: int | None = None) -> Plan:
    if (deadline_s is None) == (concurrency is None):
        raise ConfigError("give a deadline (--in) or a concurrency (--concurrency), not both")
    batch = s.backfill_batch if s.route == "backfill" else s.batch_size
    batch_s = batch * s.billed_ms / 1000
    batches = s.invocations
    if concurrency is None:
        assert deadline_s is not None
        waves_fit = math.floor(deadline_s / batch_s)
        if waves_fit < 1:
            raise ConfigError(f"one batch of {batch} takes {batch_s:.1f} s, longer than the "
                              f"deadline of {deadline_s:g} s: a smaller batch or more memory")
        concurrency = math.ceil(batches / waves_fit)
    if concurrency < 1:
        raise ConfigError("the concurrency must be at least 1")
    return Plan(scenario=s, batch=batch, batches=batches, batch_s=batch_s,
                concurrency=concurrency, waves=math.ceil(batches / concurrency),
                deadline_s=deadline_s)


def bills(plan: Plan, prices: Prices, cpu_ms: dict[str, float]) -> dict[tuple[str, str, str],
                                                                        Bill]:
    """The bill for each (model, architecture, output-document mode); `cpu_ms` maps a
    model's name to its CPU time per image."""
    out = {}
    for model, ms in cpu_ms.items():
        for arch in ARCHS:
            for mode in MODES:
                out[(model, arch, mode)] = bill_for(dataclasses.replace(
                    plan.scenario, arch=arch, output_documents=mode, cpu_ms_per_image=ms),
                    prices)
    return out


def checks(plan: Plan, hot_label_share: float) -> list[Check]:
    """Each quota the run meets: what it needs against the default."""
    c = min(plan.concurrency, plan.batches)
    ips = plan.images_per_s
    s = plan.scenario
    out = [Check(quota("lambda_concurrency"), c, quota("lambda_concurrency").default,
                 "this function alone; others in the account share it"),
           Check(quota("lambda_scaling"), c, quota("lambda_scaling").default,
                 f"full concurrency after {10 * math.ceil(c / 1000)} s")]
    if s.route == "backfill":
        out += [
            Check(quota("map_max_concurrency"), c, quota("map_max_concurrency").default,
                  f"set BackfillMaxConcurrency={c}"),
            Check(quota("map_children"), c, quota("map_children").default),
            Check(quota("backfill_timeout"), plan.batch_s, quota("backfill_timeout").default,
                  "one batch's duration"),
            Check(quota("sfn_express_start"), plan.batches_per_s,
                  quota("sfn_express_start").default, "one child a batch"),
            Check(quota("sfn_standard_transitions"), plan.batches_per_s,
                  quota("sfn_standard_transitions").default,
                  "one a child started"),
        ]
    else:
        out.append(Check(quota("esm_max_concurrency"), c, quota("esm_max_concurrency").default,
                         f"set MaximumConcurrency={c}"))
    writes = ips * ITEM_KB
    hot = writes * hot_label_share
    out += [
        Check(quota("ddb_table_writes"), writes, quota("ddb_table_writes").default,
              "the table, and the by-label index as much again"),
        Check(quota("ddb_warm_writes"), writes, quota("ddb_warm_writes").default,
              "a new table; DynamoDB scales past it, throttling meanwhile"),
        Check(quota("ddb_partition_writes"), hot, quota("ddb_partition_writes").default,
              f"by-label key model#label at {100 * hot_label_share:.0f} % of the photos "
              f"(binds above {100 * min(1.0, 1000 / writes):.0f} %); the table's key "
              "`image` is one per photo" if writes else ""),
        Check(quota("s3_get_prefix"), ips, quota("s3_get_prefix").default,
              "the photos, all under one prefix"),
        Check(quota("s3_put_prefix"), ips, quota("s3_put_prefix").default,
              f"per-image documents; batch: {plan.batches_per_s:,.0f}/s"
              + ("; the uploads to the input prefix as many" if s.route == "ingest" else "")),
    ]
    return out


def grows_with_cpu(line: Line) -> bool:
    """Lambda's compute, and the Express children's duration (a batch's Lambda call)."""
    return line.price.startswith("lambda_gb_s") or line.price == "sfn_express_gb_s"


def budget_needs(bill: Bill, budget: float) -> tuple[float, float]:
    """(the bill without the lines that grow with CPU time, the CPU ms per image at which
    the whole bill equals `budget`; 0 when even free compute is over it). Those lines are
    Lambda's compute and, for a backfill, the Express children's duration."""
    s = bill.scenario
    scaling = sum(line.usd for line in bill.lines if grows_with_cpu(line))
    rest = bill.total - scaling
    if not scaling:
        return rest, 0.0
    # those lines grow with the billed duration: the CPU time over the vCPUs + the requests
    billed = s.billed_ms * (budget - rest) / scaling
    return rest, max(0.0, (billed - (s.wait_ms or 0.0)) * s.vcpus)
