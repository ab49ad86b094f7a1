"""`imgpipe plan`: the concurrency a deadline needs, the run's length, the quotas that bind,
checked against cases worked by hand (the arithmetic is in each test's comments), and the
README's million-photo plan is the command's own output."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from imgpipe.cli import main
from imgpipe.cost import PhotoCost, Scenario, bill_for, load_prices
from imgpipe.cost.plan import budget_needs, checks, make_plan
from imgpipe.cost.quotas import QUOTAS
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# 100 ms of CPU an image; at 1,769 MB a function has exactly one vCPU.
PHOTO = PhotoCost("12mp", 100.0, 60.0, 15.0, 4000, 3000, 3_000_000)


def scenario(**kw: object) -> Scenario:
    base = Scenario(photo=PHOTO, memory_mb=1769, images=10_000, route="backfill",
                    backfill_batch=50)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def binding(plan: object, share: float) -> set[str]:
    return {c.quota.key for c in checks(plan, share) if c.binds}  # type: ignore[arg-type]


def test_a_deadline_gives_the_smallest_concurrency_whose_waves_fit() -> None:
    # One image: 100 ms / 1 vCPU = 0.1 s; a batch of 50: 5 s. 10,000 images: 200 batches.
    # In 60 s: floor(60 / 5) = 12 waves; 200 / 12 = 16.7 -> 17 functions, which need
    # ceil(200 / 17) = 12 waves = 60 s. Busy: 17 x 50 / 5 s = 170 images/s.
    plan = make_plan(scenario(), deadline_s=60)
    assert (plan.batches, plan.batch_s, plan.concurrency, plan.waves) == (200, 5.0, 17, 12)
    assert plan.seconds == 60.0
    assert plan.images_per_s == 170.0
    # 17 children > the template's BackfillMaxConcurrency of 10: the only one that binds;
    # even with every photo under one label, 170 writes/s < 1,000 a partition.
    assert binding(plan, share=1.0) == {"map_max_concurrency"}


def test_a_concurrency_gives_the_time_and_the_rates_meet_s3_and_dynamodb() -> None:
    # 1,000,000 images in 20,000 batches of 50 (5 s each); 1,000 at once: 20 waves = 100 s.
    # Busy: 1,000 x 50 / 5 = 10,000 images/s: GETs > 5,500 and per-image PUTs > 3,500 a
    # prefix; 10,000 writes/s > a new table's 4,000 but < 40,000; the hottest label at
    # 20 %: 2,000 writes/s on one by-label key > 1,000. 1,000 functions = the account's
    # 1,000 (not above it). Children start at 1,000 / 5 s = 200/s, a transition each: 200/s.
    plan = make_plan(scenario(images=1_000_000), concurrency=1000)
    assert (plan.batches, plan.waves, plan.seconds, plan.images_per_s) == (
        20_000, 20, 100.0, 10_000.0)
    assert binding(plan, share=0.2) == {"map_max_concurrency", "s3_get_prefix",
                                        "s3_put_prefix", "ddb_warm_writes",
                                        "ddb_partition_writes"}
    needed = {c.quota.key: c.needed for c in checks(plan, 0.2)}
    assert needed["ddb_partition_writes"] == pytest.approx(2000.0)
    assert needed["sfn_express_start"] == pytest.approx(200.0)
    assert needed["sfn_standard_transitions"] == pytest.approx(200.0)
    # At 5 % of the photos the hottest key takes 500 writes/s: under its 1,000.
    assert "ddb_partition_writes" not in binding(plan, share=0.05)


def test_the_ingest_route_meets_the_event_source_maximum_instead_of_the_map() -> None:
    # Batches of 16 at 0.1 s an image: 1.6 s. 10,000 images: 625 batches; in 16 s: 10
    # waves, 625 / 10 -> 63 functions > the template's MaximumConcurrency of 5.
    plan = make_plan(scenario(route="ingest", batch_size=16), deadline_s=16)
    assert (plan.batches, plan.concurrency, plan.waves) == (625, 63, 10)
    assert binding(plan, share=1 / 6) == {"esm_max_concurrency"}


def test_a_deadline_shorter_than_one_batch_is_said() -> None:
    with pytest.raises(ConfigError, match="longer than the deadline"):
        make_plan(scenario(), deadline_s=4)


def test_the_budget_arithmetic_prices_the_compute_it_leaves() -> None:
    # The CPU time budget_needs gives makes the whole bill equal the budget.
    prices = load_prices()
    bill = bill_for(scenario(images=1_000_000, arch="arm64", output_documents="batch"),
                    prices)
    rest, ms = budget_needs(bill, budget=bill.total + 1.0)
    again = bill_for(dataclasses.replace(bill.scenario, cpu_ms_per_image=ms), prices)
    assert again.total == pytest.approx(bill.total + 1.0)
    scaling = [x.usd for x in bill.lines if x.price in ("lambda_gb_s_arm64", "sfn_express_gb_s")]
    assert len(scaling) == 2 and rest == pytest.approx(bill.total - sum(scaling))
    assert budget_needs(bill, budget=rest / 2)[1] == 0.0  # over even with free compute


def test_the_requests_measured_beside_the_cpu_lengthen_each_batch_and_stay_in_the_budget(
        ) -> None:
    from imgpipe.cost.inputs import BilledDuration

    # 100 ms of CPU at 1 vCPU + 20 ms of requests (billed 60 ms at 1 vCPU on photos whose
    # core CPU time was 40 ms): 120 ms an image, 6 s a batch of 50; 60 s fit 10 waves,
    # 200 batches need 20 functions.
    photo = dataclasses.replace(PHOTO, billed={"backfill": BilledDuration(60.0, 50.0, 40.0)})
    plan = make_plan(scenario(photo=photo), deadline_s=60)
    assert (plan.batch_s, plan.concurrency, plan.waves) == (pytest.approx(6.0), 20, 10)
    # The budget's CPU time leaves the requests as they are: the bill at that CPU time
    # (plus the same 20 ms) equals the budget.
    prices = load_prices()
    bill = bill_for(scenario(photo=photo, images=1_000_000, arch="arm64",
                             output_documents="batch"), prices)
    _, ms = budget_needs(bill, budget=bill.total + 1.0)
    again = bill_for(dataclasses.replace(bill.scenario, cpu_ms_per_image=ms), prices)
    assert again.scenario.wait_ms == 20.0
    assert again.total == pytest.approx(bill.total + 1.0)


def test_every_quota_names_its_page_and_what_to_raise() -> None:
    for q in QUOTAS:
        assert q.source.startswith(("https://docs.aws.amazon.com/",
                                    "https://github.com/awsdocs/")), q
        assert q.to_raise and q.default > 0, q


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["plan", "--in", "ten minutes"])
    assert e.value.code == 2
    assert "a duration such as" in capsys.readouterr().err


def _fenced_after(page: str, marker: str) -> str:
    text = (ROOT / page).read_text(encoding="utf-8")
    m = re.search(re.escape(marker) + r"\n```\n(.*?)```", text, flags=re.S)
    assert m, f"{page} has no block after {marker!r}"
    return m.group(1)


@pytest.mark.parametrize(("page", "argv"), [
    ("README.md", ["--in", "10m", "--budget", "3", "--brief"]),
    ("docs/cost-and-speed.md", ["--in", "10m", "--budget", "3"]),
])
def test_the_pages_million_photo_plan_is_the_commands_output(
        page: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    command = "imgpipe plan " + " ".join(argv)
    assert main(["plan", *argv]) == 0
    out = capsys.readouterr().out
    assert _fenced_after(page, f"`{command}`:") == out
