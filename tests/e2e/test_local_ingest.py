"""`imgpipe local` + the real aws CLI: what a person with no AWS account does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, LocalProcess

pytestmark = pytest.mark.e2e

BUCKET = "imgpipe-local"
TABLE = "imgpipe-predictions"
MODEL = "efficientnet-lite0@1"


def test_startup_banner_names_the_resources_and_exports(local_stack: LocalProcess) -> None:
    banner = "".join(local_stack.output)
    assert f"export AWS_ENDPOINT_URL=http://127.0.0.1:{local_stack.port}" in banner
    for name in (BUCKET, TABLE, "imgpipe-ingest", "imgpipe-ingest-dlq", "imgpipe-backfill"):
        assert name in banner


def test_uploads_end_with_exactly_one_correct_item_each(
    local_stack: LocalProcess, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    (photos / "holiday photos").mkdir(parents=True)
    shutil.copy(ROOT / "samples" / "coffee.jpg", photos / "holiday photos" / "café au lait.jpg")
    shutil.copy(ROOT / "samples" / "chelsea.jpg", photos / "CHELSEA.JPG")
    shutil.copy(ROOT / "samples" / "rocket.jpg", photos / "rocket+launch 100%.jpg")
    (photos / "notes.txt").write_text("not a photo\n")

    local_stack.aws("s3", "cp", str(photos), f"s3://{BUCKET}/incoming/", "--recursive")
    # A duplicate upload of the same bytes: same ETag, so no second record or inference.
    local_stack.aws("s3", "cp", str(photos / "CHELSEA.JPG"), f"s3://{BUCKET}/incoming/CHELSEA.JPG")

    expected = {
        "incoming/holiday photos/café au lait.jpg": "espresso",
        "incoming/CHELSEA.JPG": "cat",
        "incoming/rocket+launch 100%.jpg": None,
    }
    for key, label in expected.items():
        item = local_stack.wait_for_item(TABLE, f"s3://{BUCKET}/{key}", MODEL)
        assert item["status"]["S"] == "classified", item
        if label:
            assert label in item["label"]["S"]
        assert item["output_key"]["S"].startswith("predictions/")
        out = local_stack.aws("s3", "cp", f"s3://{BUCKET}/{item['output_key']['S']}", "-")
        doc = out if isinstance(out, dict) else json.loads(out)
        assert doc["image"] == f"s3://{BUCKET}/{key}"

    bad = local_stack.wait_for_item(TABLE, f"s3://{BUCKET}/incoming/notes.txt", MODEL)
    assert bad["status"]["S"] == "rejected"
    assert "not an image" in bad["error"]["S"]

    scan = local_stack.aws("dynamodb", "scan", "--table-name", TABLE)
    images = [i["image"]["S"] for i in scan["Items"]]
    assert sorted(images) == sorted({*images}), "exactly one item per (image, model)"
    assert len(images) == 4

    query = local_stack.aws(
        "dynamodb", "query", "--table-name", TABLE, "--index-name", "by-label",
        "--key-condition-expression", "label_key = :k AND score >= :s",
        "--expression-attribute-values",
        json.dumps({":k": {"S": f"{MODEL}#espresso"}, ":s": {"N": "0.5"}}),
    )
    assert [i["image"]["S"] for i in query["Items"]] == [
        f"s3://{BUCKET}/incoming/holiday photos/café au lait.jpg"]

    # The CLI reads the same table.
    import subprocess

    from tests.e2e.conftest import BIN

    done = subprocess.run([str(BIN / "imgpipe"), "results", "query", "--label", "espresso"],
                          env=local_stack.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "café au lait.jpg" in done.stdout
