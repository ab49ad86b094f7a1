"""`imgpipe cost`: the bill's arithmetic, the output-document modes, overrides, and the
command on a fresh clone's committed figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from imgpipe.cli import main
from imgpipe.cost import PhotoCost, Scenario, bill_for, load_cost_inputs, load_prices
from imgpipe.cost.inputs import BilledDuration, cost_inputs_doc
from imgpipe.cost.model import PRICES_PATH, cpu_time_compute
from pipeline.errors import ConfigError

PHOTO = PhotoCost(name="test", cpu_ms_per_image=100.0, decode_ms=60.0, inference_ms=15.0,
                  width=4000, height=3000, mean_bytes=3_000_000)


def line(bill: object, start: str) -> float:
    return next(x.usd for x in bill.lines if x.name.startswith(start))  # type: ignore[attr-defined]


def test_the_bill_line_by_line() -> None:
    prices = load_prices()
    bill = bill_for(Scenario(photo=PHOTO, memory_mb=1769, images=1000, batch_size=10), prices)
    # 1 vCPU at 1,769 MB: 0.1 s an image, 1769/1024 GB -> 172.75 GB-s.
    assert line(bill, "Lambda compute") == pytest.approx(1000 * 0.1 * 1769 / 1024
                                                          * 0.0000166667)
    assert line(bill, "Lambda requests") == pytest.approx(100 * 0.20 / 1e6)
    assert line(bill, "SQS") == pytest.approx((1000 + 2 * 100) * 0.40 / 1e6)
    assert line(bill, "DynamoDB writes") == pytest.approx(2000 * 0.625 / 1e6)
    assert line(bill, "S3 GET") == pytest.approx(1000 * 0.0004 / 1000)
    # the done-already check, and the record check after each document
    assert line(bill, "DynamoDB reads") == pytest.approx(2000 * 0.125 / 1e6)
    assert line(bill, "S3 PUT") == pytest.approx(1000 * 0.005 / 1000)
    assert bill.total == pytest.approx(sum(x.usd for x in bill.lines))


def test_memory_buys_speed_and_arm64_is_cheaper_per_gb_second() -> None:
    prices = load_prices()
    small = bill_for(Scenario(photo=PHOTO, memory_mb=1024), prices)
    large = bill_for(Scenario(photo=PHOTO, memory_mb=4096), prices)
    assert line(small, "Lambda compute") == pytest.approx(line(large, "Lambda compute"))
    assert Scenario(photo=PHOTO, memory_mb=4096).batch_seconds == pytest.approx(
        Scenario(photo=PHOTO, memory_mb=1024).batch_seconds / 4)
    arm = bill_for(Scenario(photo=PHOTO, arch="arm64"), prices)
    x86 = bill_for(Scenario(photo=PHOTO, arch="x86_64"), prices)
    assert line(arm, "Lambda compute") / line(x86, "Lambda compute") == pytest.approx(
        0.0000133334 / 0.0000166667)
    with pytest.raises(ConfigError, match="128 to 10240 MB"):
        bill_for(Scenario(photo=PHOTO, memory_mb=20000), prices)


def test_the_per_image_document_dominates_and_batching_removes_it() -> None:
    prices = load_prices()
    per_image = bill_for(Scenario(photo=PHOTO), prices)
    assert per_image.dominant.name == "S3 PUT (output documents, per-image)"
    batch = bill_for(Scenario(photo=PHOTO, output_documents="batch", batch_size=16), prices)
    assert line(batch, "S3 PUT") == pytest.approx(62_500 * 0.005 / 1000)  # one per invocation
    none = bill_for(Scenario(photo=PHOTO, output_documents="none"), prices)
    assert not any(x.name.startswith("S3 PUT") for x in none.lines)
    assert none.total < batch.total < per_image.total
    # the PUT, and the record check after it
    assert per_image.total - none.total == pytest.approx(5.0 + 0.125)


def test_a_backfill_has_step_functions_and_a_listing_instead_of_sqs() -> None:
    bill = bill_for(Scenario(photo=PHOTO, route="backfill", images=64_000), load_prices())
    names = [x.name for x in bill.lines]
    assert not any(n.startswith("SQS") for n in names)
    # One transition a child (AWS's docs) and the parent's few; each child an Express
    # request and its duration: 64 images x 100 ms over 1.16 vCPUs, in 64 MB.
    assert line(bill, "Step Functions transitions") == pytest.approx((1000 + 8) * 0.025 / 1000)
    assert line(bill, "Step Functions Express children (requests)") == pytest.approx(
        1000 * 1.0 / 1e6)
    child_s = 64 * 0.1 / (2048 / 1769)
    assert line(bill, "Step Functions Express children (duration)") == pytest.approx(
        1000 * child_s * 0.0625 * 0.00001667)
    assert line(bill, "S3 LIST") == pytest.approx(64 * 0.005 / 1000)


def test_price_overrides_and_unknown_names() -> None:
    prices = load_prices().with_overrides({"s3_put": 0.0})
    assert prices.origin["s3_put"] == "you"
    assert bill_for(Scenario(photo=PHOTO), prices).dominant.name.startswith("Lambda compute")
    with pytest.raises(ConfigError, match="unknown price 's3_puts'.*s3_put"):
        load_prices().with_overrides({"s3_puts": 1.0})


def test_every_price_has_a_date_a_source_and_a_quote() -> None:
    doc = json.loads(PRICES_PATH.read_text())
    assert doc["as_listed_on"] and doc["region"] == "us-east-1"
    for name, entry in doc["prices"].items():
        assert entry["usd"] > 0 and entry["quoted"] and entry["unit"], name
        assert entry["source"] in ("issue 12", "recalled"), name


def test_the_command_on_a_fresh_clone(capsys: pytest.CaptureFixture[str]) -> None:
    committed = load_cost_inputs()  # bench/cost-inputs.json, in the repository
    assert committed.photo("efficientnet-lite0@1", "12mp").cpu_ms_per_image > 0
    assert main(["cost"]) == 0
    out = capsys.readouterr().out
    assert "as listed on 2026-11-28" in out and "not re-checked online" in out
    # the committed run measured billed duration: priced at it, CPU time alone beside it
    assert "Lambda bills duration:" in out and "CPU time alone would be" in out
    assert "ms of requests (the SDK's CPU and the waiting for S3 and DynamoDB)" in out
    largest = [x for x in out.splitlines() if x.endswith("<- largest")]
    assert len(largest) == 1 and "S3 PUT (output documents, per-image)" in largest[0]
    for word in ("per-image", "batch", "none", "arm64", "x86_64", "1024 MB", "4096 MB",
                 "always-on instance", "managed label-detection API", "assumptions:",
                 "prices written from memory, check them first"):
        assert word in out, word


def test_the_command_takes_the_users_figures(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    assert main(["cost", "--json", "--memory", "3008", "--photo", "web", "--cpu-ms", "40",
                 "--wait-ms", "5", "--price", "s3_put=0.00001", "--output-documents",
                 "batch", "--images", "2000000"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scenario"] == {"photo": "web", "arch": "x86_64", "memory_mb": 3008,
                               "output_documents": "batch", "route": "ingest",
                               "batch_size": 16, "cpu_ms_per_image": 40.0,
                               "wait_ms_per_image": 5.0,
                               "billed_ms_per_image": pytest.approx(40 / (3008 / 1769) + 5,
                                                                    abs=1e-3)}
    put = next(x for x in doc["bill"]["lines"] if x["name"].startswith("S3 PUT"))
    assert put["quantity"] == 125_000 and put["usd"] == pytest.approx(1.25)
    assert doc["prices"]["origin"]["s3_put"] == "you"
    assert main(["cost", "--price", "cheap"]) == 2
    assert main(["cost", "--inputs", str(tmp_path / "none.json")]) == 1
    assert "run `imgpipe bench`" in capsys.readouterr().err


def test_a_benchmark_run_writes_each_model_it_measured_into_the_cost_inputs() -> None:
    from types import SimpleNamespace

    from imgpipe.cost import cost_inputs_doc

    sets = {"12mp": SimpleNamespace(width=4000, height=3000, mean_bytes=3_000_000)}
    values = {"core.12mp.ips": 20.0, "decode.12mp.draft.ms": 50.0, "infer.1t.ms": 16.0,
              "core.12mp.ips@efficientnet-lite2@1": 10.0,
              "infer.1t.ms@efficientnet-lite2@1": 40.0}
    doc = cost_inputs_doc(values, 2, sets, "efficientnet-lite0@1", "cpu", "today")
    assert sorted(doc["models"]) == ["efficientnet-lite0@1", "efficientnet-lite2@1"]
    lite2 = doc["models"]["efficientnet-lite2@1"]["12mp"]
    assert (lite2["cpu_ms_per_image"], lite2["inference_ms"], lite2["decode_ms"]) == (
        200.0, 40.0, 50.0)
    assert doc["models"]["efficientnet-lite0@1"]["12mp"]["cpu_ms_per_image"] == 100.0


MEASURED = BilledDuration(aws_ms=60.0, none_ms=50.0, cpu_ms=40.0)  # 20 ms beyond the CPU


def test_the_bill_prices_billed_duration_cpu_time_plus_the_measured_waiting() -> None:
    prices = load_prices()
    photo = dataclasses.replace(PHOTO, billed={"ingest": MEASURED})
    one = Scenario(photo=photo, memory_mb=1769, images=1000)  # 1 vCPU
    assert one.wait_ms == 20.0 and one.billed_ms == pytest.approx(100 + 20)
    assert line(bill_for(one, prices), "Lambda compute") == pytest.approx(
        1000 * 0.120 * 1769 / 1024 * 0.0000166667)
    # more memory shortens the CPU time, not the waiting
    two = Scenario(photo=photo, memory_mb=2 * 1769, images=1000)
    assert two.billed_ms == pytest.approx(50 + 20)
    assert two.batch_seconds == pytest.approx(16 * 0.070)
    # beside it, what CPU time alone would bill
    gb_s, usd = cpu_time_compute(one, prices)
    assert gb_s == pytest.approx(1000 * 0.100 * 1769 / 1024)
    assert usd == pytest.approx(gb_s * 0.0000166667)
    # the backfill was not measured: CPU time alone; a figure of the user's replaces both
    assert Scenario(photo=photo, route="backfill").wait_ms is None
    assert Scenario(photo=photo, memory_mb=1769, wait_ms_per_image=5.0).billed_ms == \
        pytest.approx(105.0)
    assert Scenario(photo=PHOTO, memory_mb=1769).billed_ms == pytest.approx(100.0)


class _Set:
    width, height, mean_bytes = 4000, 3000, 3_000_000


def test_a_benchmark_run_hands_its_billed_duration_rows_to_the_cost(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = {"core.12mp.ips": 20.0, "decode.12mp.draft.ms": 50.0, "infer.1t.ms": 15.0,
              "billed.12mp.ingest.aws.ms": 60.0, "billed.12mp.ingest.none.ms": 50.0,
              "latency.core.12mp.cpu_ms": 40.0}
    doc = cost_inputs_doc(values, 2, {"12mp": _Set()}, "efficientnet-lite0@1", "cpu",
                          "2026-12-04")
    assert doc["models"]["efficientnet-lite0@1"]["12mp"]["billed"] == {
        "ingest": {"aws_ms": 60.0, "none_ms": 50.0, "cpu_ms": 40.0}}
    path = tmp_path / "cost-inputs.json"
    path.write_text(json.dumps(doc))
    photo = load_cost_inputs(path).photo("efficientnet-lite0@1", "12mp")
    assert photo.billed == {"ingest": MEASURED} and photo.cpu_ms_per_image == 100.0

    assert main(["cost", "--inputs", str(path), "--memory", "1769"]) == 0
    out = capsys.readouterr().out
    assert "Lambda bills duration: 120.0 ms an image (CPU time 100.0 ms + requests 20.0 ms" \
        in out
    assert "CPU time alone would be 172,754 GB-s" in out
    assert "billed duration under AWS-like latency on the local stack (60.0 ms at 1 vCPU" in out
    assert main(["cost", "--inputs", str(path), "--memory", "1769", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    compute = next(x for x in doc["bill"]["lines"] if x["name"].startswith("Lambda compute"))
    assert doc["scenario"]["billed_ms_per_image"] == 120.0
    assert doc["cpu_time_compute"]["usd"] == pytest.approx(compute["usd"] * 100 / 120,
                                                           abs=1e-4)
    assert main(["cost", "--inputs", str(path), "--wait-ms", "-1"]) == 2


def test_a_model_the_latency_rows_did_not_measure_takes_the_measured_models_requests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = {"core.12mp.ips": 20.0, "decode.12mp.draft.ms": 50.0, "infer.1t.ms": 15.0,
              "billed.12mp.ingest.aws.ms": 60.0, "billed.12mp.ingest.none.ms": 50.0,
              "latency.core.12mp.cpu_ms": 40.0,
              "core.12mp.ips@efficientnet-lite2@1": 10.0}
    doc = cost_inputs_doc(values, 2, {"12mp": _Set()}, "efficientnet-lite0@1", "cpu",
                          "2026-12-04")
    assert "billed" not in doc["models"]["efficientnet-lite2@1"]["12mp"]  # not measured
    path = tmp_path / "cost-inputs.json"
    path.write_text(json.dumps(doc))
    lite2 = load_cost_inputs(path).photo("efficientnet-lite2@1", "12mp")
    assert (lite2.billed, lite2.billed_from) == ({"ingest": MEASURED}, "efficientnet-lite0@1")
    assert lite2.cpu_ms_per_image == 200.0  # its own CPU time
    assert main(["cost", "--inputs", str(path), "--memory", "1769",
                 "--model", "efficientnet-lite2@1"]) == 0
    out = capsys.readouterr().out
    assert "220.0 ms an image (CPU time 200.0 ms + requests 20.0 ms" in out
    assert "measured with efficientnet-lite0@1" in out
