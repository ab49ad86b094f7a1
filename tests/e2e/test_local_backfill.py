"""Backfill on the local stack: 200+ objects, driven with the aws CLI and `imgpipe backfill`."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.e2e.conftest import BIN, ROOT, LocalProcess

pytestmark = pytest.mark.e2e

BUCKET = "imgpipe-local"
TABLE = "imgpipe-predictions"
MODEL = "efficientnet-lite0@1"
MODEL_V2 = "efficientnet-lite0@2"
ODD_NAMES = ["café {i}.jpg", "a+b {i}.JPG", "100% {i}", "東京/{i}.jpeg", "deep/er/dir/{i}.jpg",
             "spaces and (parens) {i}.jpg", "{i}"]


def _clients(stack: LocalProcess) -> tuple[Any, Any]:
    session = boto3.session.Session(region_name="us-east-1", aws_access_key_id="test",
                                    aws_secret_access_key="test")
    return (session.client("s3", endpoint_url=stack.endpoint),
            session.client("dynamodb", endpoint_url=stack.endpoint))


def _records(ddb: Any) -> list[dict[str, Any]]:
    from boto3.dynamodb.types import TypeDeserializer

    de = TypeDeserializer()
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": TABLE}
    while True:
        page = ddb.scan(**kwargs)
        items += [{k: de.deserialize(v) for k, v in i.items()} for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _run_with_aws_cli(stack: LocalProcess, request: dict[str, Any]) -> dict[str, Any]:
    machines = stack.aws("stepfunctions", "list-state-machines")["stateMachines"]
    arn = next(m["stateMachineArn"] for m in machines if m["name"] == "imgpipe-backfill")
    started = stack.aws("stepfunctions", "start-execution", "--state-machine-arn", arn,
                        "--input", json.dumps(request))
    deadline = time.monotonic() + 300
    while True:
        desc = stack.aws("stepfunctions", "describe-execution", "--execution-arn",
                         started["executionArn"])
        if desc["status"] != "RUNNING":
            return desc  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, "backfill did not finish in 300 s"
        stack.assert_alive()
        time.sleep(1)


def test_backfill_200_objects(local_stack: LocalProcess, tmp_path: Path) -> None:
    s3, ddb = _clients(local_stack)
    photos = [p.read_bytes() for p in sorted((ROOT / "samples").glob("*.jpg"))]
    images: list[str] = []
    for i in range(200):
        # Copies of real photos, each with its own bytes (a trailing byte after the JPEG's
        # end marker changes the ETag, not the picture).
        data = photos[i % len(photos)] + bytes([i % 251])
        name = ODD_NAMES[i % len(ODD_NAMES)].format(i=i) if i % 5 == 0 else f"img-{i}.jpg"
        key = f"archive/{'early/' if i < 40 else ''}{name}"
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        images.append(key)
    bad = {
        "archive/bad/notes.txt": b"holiday notes, not a photo\n",
        "archive/bad/truncated.jpg": photos[0][: len(photos[0]) // 3],
        "archive/bad/empty.jpg": b"",
        "archive/bad/clip.mp4": b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200,
        "archive/bad/random.bin": bytes(range(256)) * 4,
        "archive/bad/page.pdf": b"%PDF-1.7\n" + b"0" * 100,
    }
    for key, data in bad.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    folders = ["archive/", "archive/empty-folder/", "archive/bad/", "archive/deep/",
               "archive/early/"]
    for key in folders:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
    total = len(images) + len(bad) + len(folders)
    assert total >= 200

    # Some are already classified: a first backfill of archive/early/ (40 photos).
    first = _run_with_aws_cli(local_stack, {"bucket": BUCKET, "prefix": "archive/early/"})
    assert first["status"] == "SUCCEEDED", first
    assert json.loads(first["output"])["counts"]["classified"] == 40

    # The full run, through the aws CLI: exact counts in describe-execution's output.
    desc = _run_with_aws_cli(local_stack, {"bucket": BUCKET, "prefix": "archive/"})
    assert desc["status"] == "SUCCEEDED", desc
    summary = json.loads(desc["output"])
    assert summary["counts"] == {
        "classified": len(images) - 40, "skipped": 40, "rejected": len(bad), "gone": 0,
        "superseded": 0, "failed": 0, "ignored": len(folders)}

    records = _records(ddb)
    by_image = {r["image"]: r for r in records if r["model"] == MODEL}
    assert len(by_image) == len([r for r in records if r["model"] == MODEL]), "one per image"
    assert set(by_image) == {f"s3://{BUCKET}/{k}" for k in [*images, *bad]}
    assert {by_image[f"s3://{BUCKET}/{k}"]["status"] for k in images} == {"classified"}
    for key in bad:
        rec = by_image[f"s3://{BUCKET}/{key}"]
        assert rec["status"] == "rejected" and rec["error"], rec
    coffee_like = [by_image[f"s3://{BUCKET}/{k}"]["label"] for k in images[2::6]]
    assert set(coffee_like) == {"espresso"}, "sample #2 (coffee) and its copies"

    # A second run skips everything, through `imgpipe backfill`.
    done = subprocess.run(
        [str(BIN / "imgpipe"), "backfill", f"s3://{BUCKET}/archive/", "--json"],
        env=local_stack.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    again = json.loads(done.stdout.strip().splitlines()[-1])
    assert again["counts"]["classified"] == 0
    assert again["counts"]["skipped"] == len(images) + len(bad)
    assert len(_records(ddb)) == len(records)

    # --overwrite with a second model version: a second record per image, the first intact.
    v2 = tmp_path / "model-v2"
    v2.mkdir()
    for name in ("efficientnet_lite0.onnx", "labels.txt"):
        shutil.copy(ROOT / "model" / name, v2 / name)
    manifest = json.loads((ROOT / "model" / "manifest.json").read_text())
    manifest["version"] = "2"
    (v2 / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run(
        [str(BIN / "imgpipe"), "backfill", f"s3://{BUCKET}/archive/", "--overwrite",
         "--model", str(v2), "--json"],
        env=local_stack.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    v2_summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert v2_summary["models"] == [MODEL_V2]
    assert v2_summary["counts"]["classified"] == len(images)
    assert v2_summary["counts"]["rejected"] == len(bad)
    after = _records(ddb)
    assert {r["image"]: r for r in after if r["model"] == MODEL} == by_image, \
        "the first model's records are untouched"
    v2_images = {r["image"] for r in after if r["model"] == MODEL_V2}
    assert v2_images == set(by_image)
    assert len(after) == 2 * len(by_image)


def test_a_backfill_whose_batches_all_fail_fails_and_says_why(local_stack: LocalProcess) -> None:
    """Issue 18: with a model that does not exist every batch failed, yet the execution
    SUCCEEDED, `imgpipe backfill` printed `failed 0`, exited 0 and said "no objects found
    there". Past the tolerated percentage the run fails, as on AWS."""
    s3, _ = _clients(local_stack)
    photo = (ROOT / "samples" / "coffee.jpg").read_bytes()
    for i in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"nomodel/{i}.jpg", Body=photo + bytes([i]))
    done = subprocess.run(
        [str(BIN / "imgpipe"), "backfill", f"s3://{BUCKET}/nomodel/", "--model",
         "s3://imgpipe-local/models/missing/"],
        env=local_stack.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "no objects found" not in said
    assert "execution FAILED: States.ExceedToleratedFailureThreshold" in said, said
    assert "models/missing" in said, said  # the model problem, in the child's own words
    assert "1 of 1 batches failed" in said, said
    runs = local_stack.aws("stepfunctions", "list-executions", "--state-machine-arn",
                           _state_machine_arn(local_stack))["executions"]
    failed = next(e for e in runs if e["status"] == "FAILED")
    map_runs = local_stack.aws("stepfunctions", "list-map-runs", "--execution-arn",
                               failed["executionArn"])["mapRuns"]
    children = local_stack.aws("stepfunctions", "list-executions", "--map-run-arn",
                               map_runs[0]["mapRunArn"])["executions"]
    assert [c["status"] for c in children] == ["FAILED"]


def test_a_published_model_backfills_beside_the_default_and_compares(
        local_stack: LocalProcess, tmp_path: Path) -> None:
    """Issue 22's path to production on the local stack: `imgpipe model publish` to the
    stack's bucket, `imgpipe backfill --model s3://...` with it, then `imgpipe results
    compare` of the two models' records for the prefix."""
    from tests.tiny_models import RESNET_IMAGENET, make_tiny_model

    model = make_tiny_model(tmp_path / "tiny", RESNET_IMAGENET)
    folder = f"s3://{BUCKET}/models/tiny-resnet/18/"

    def imgpipe(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "imgpipe"), *args], env=local_stack.env,
                              capture_output=True, text=True, timeout=300)

    done = imgpipe("model", "publish", str(model.directory), folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"published tiny-resnet@18 to {folder}" in done.stdout
    again = imgpipe("model", "publish", str(model.directory), folder)
    assert again.returncode == 0 and "already published" in again.stdout, again.stderr

    s3, _ = _clients(local_stack)
    names = ("coffee.jpg", "chelsea.jpg", "rocket.jpg")
    for name in names:
        s3.put_object(Bucket=BUCKET, Key=f"compare/{name}",
                      Body=(ROOT / "samples" / name).read_bytes())
    for extra in ([], ["--model", folder]):
        done = imgpipe("backfill", f"s3://{BUCKET}/compare/", "--json", *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1])["counts"]["classified"] == 3
    done = imgpipe("results", "compare", f"s3://{BUCKET}/compare/", "--model", MODEL,
                   "--model", "tiny-resnet@18", "--json")
    assert done.returncode == 0, done.stderr
    compared = json.loads(done.stdout)
    assert (compared["both"], compared["only_a"], compared["only_b"]) == (3, 0, 0)
    assert compared["agree"] == 0  # ImageNet labels against the tiny model's four
    assert {d["a_label"] for d in compared["disagreements"]} >= {"espresso"}
    assert {d["b_label"] for d in compared["disagreements"]} <= set(RESNET_IMAGENET["labels"])


def test_no_traceback_in_the_stacks_output_during_backfills(local_stack: LocalProcess) -> None:
    """Issue 20: about one backfill in four printed moto's traceback (`list_map_runs` of
    an execution whose worker had not built its environment yet). Runs after the module's
    backfills. (A function's own unhandled error is logged with its traceback, as Lambda
    logs it: the bad-model test above makes one; the emulator's are what must not show.)"""
    text = "".join(local_stack.output)
    assert "map_run_record_pool_manager" not in text, text[-3000:]
    assert "site-packages/moto/" not in text and "werkzeug" not in text, text[-3000:]


def _state_machine_arn(stack: LocalProcess) -> str:
    machines = stack.aws("stepfunctions", "list-state-machines")["stateMachines"]
    return str(next(m["stateMachineArn"] for m in machines if m["name"] == "imgpipe-backfill"))
