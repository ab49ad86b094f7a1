"""`imgpipe results compare`: two models' records for a prefix, read from the table (moto)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgpipe.cli import main
from imgpipe.compare import compare_records
from pipeline.aws import Clients
from pipeline.events import ObjectRef
from pipeline.prediction import LabelScore, Prediction
from pipeline.records import PredictionRecord, classified_record, rejected_record
from pipeline.table import PredictionsTable
from tests.functional.conftest import BUCKET, TABLE

A, B = "efficientnet-lite0@1", "resnet50@3"


def _record(key: str, model: str, label: str, score: float, *,
            bucket: str = BUCKET) -> PredictionRecord:
    top = (LabelScore(label, 0, score), LabelScore("other", 1, round(1 - score, 6)))
    prediction = Prediction(label=label, score=score, top_k=top, width=10, height=10,
                            format="JPEG")
    return classified_record(ObjectRef(bucket, key, etag="e"), model, prediction,
                             output_key=f"predictions/{model}/{key}.json")


# image -> (A's label and score, B's label and score); None: no record of that model.
PHOTOS: dict[str, tuple[tuple[str, float] | None, tuple[str, float] | None]] = {
    "incoming/1.jpg": (("espresso", 0.95), ("espresso", 0.90)),
    "incoming/2.jpg": (("tabby", 0.40), ("tiger cat", 0.45)),
    "incoming/3.jpg": (("tabby", 0.90), ("Egyptian cat", 0.85)),
    "incoming/4.jpg": (("tabby", 0.30), ("tiger cat", 0.60)),
    "incoming/5.jpg": (("rocket", 0.70), ("rocket", 0.99)),
    "incoming/6.jpg": (("moped", 0.50), None),
    "incoming/7.jpg": (None, ("cup", 0.50)),
}


@pytest.fixture
def records(aws: Clients) -> PredictionsTable:
    table = PredictionsTable(aws.dynamodb, TABLE)
    for key, (a, b) in PHOTOS.items():
        for model, result in ((A, a), (B, b)):
            if result:
                assert table.put(_record(key, model, *result), None)
    # Not counted: a rejected record, another prefix, a third model.
    table.put(rejected_record(ObjectRef(BUCKET, "incoming/8.jpg", etag="e"), A, "not an image"),
              None)
    table.put(_record("incoming/8.jpg", B, "cup", 0.9), None)
    table.put(_record("old/1.jpg", A, "tabby", 0.9), None)
    table.put(_record("old/1.jpg", B, "lion", 0.9), None)
    table.put(_record("incoming/1.jpg", "third@1", "lion", 0.9), None)
    return table


def test_compare_counts_agreement_changed_labels_and_disagreements(
        records: PredictionsTable, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", "compare", f"s3://{BUCKET}/incoming/", "--model", A,
                 "--model", B, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["both"], doc["agree"], doc["only_a"], doc["only_b"]) == (5, 2, 1, 2)
    assert doc["agreement"] == pytest.approx(0.4)
    assert doc["labels"][0] == {"label": "tabby", "a": 3, "b": 0, "lost": 3, "gained": 0}
    assert {"label": "tiger cat", "a": 0, "b": 2, "lost": 0, "gained": 2} in doc["labels"]
    assert doc["changes"][0] == {"a": "tabby", "b": "tiger cat", "images": 2}
    # Most disagreeing first: both sure (3.jpg: 0.90 vs 0.85), then 2.jpg (0.40), 4.jpg (0.30).
    assert [d["image"].rsplit("/", 1)[-1] for d in doc["disagreements"]] == \
        ["3.jpg", "2.jpg", "4.jpg"]


def test_compare_prints_a_table_for_people(records: PredictionsTable,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", "compare", f"s3://{BUCKET}/incoming/", "--model", A,
                 "--model", B, "--limit", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"s3://{BUCKET}/incoming/: 5 image(s) classified by both {A} (A) and "
                      f"{B} (B); 1 by A only, 2 by B only")
    assert out[1] == "top-1 agreement: 2 of 5 (40.0 %)"
    assert "  tabby -> tiger cat: 2" in out
    assert out[-1] == (f"  s3://{BUCKET}/incoming/3.jpg  A: tabby 0.900   "
                       "B: Egyptian cat 0.850")


def test_a_packaged_models_name_stands_for_its_id(records: PredictionsTable,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", "compare", f"s3://{BUCKET}/incoming/", "--model",
                 "efficientnet-lite0", "--model", B, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_a"] == A


def test_nothing_in_common_exits_1_with_what_to_do(aws: Clients,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    PredictionsTable(aws.dynamodb, TABLE).put(_record("incoming/1.jpg", A, "cup", 0.5), None)
    assert main(["results", "compare", f"s3://{BUCKET}/incoming/", "--model", A,
                 "--model", B]) == 1
    err = capsys.readouterr().err
    assert "has a classified record of both" in err and "imgpipe backfill" in err


@pytest.mark.parametrize(("argv", "sentence"), [
    (["--model", A], "give --model twice"),
    (["--model", A, "--model", A], "two different models"),
    (["--model", A, "--model", "s3://b/m/1/"], "give the model's NAME@VERSION"),
    (["--model", A, "--model", "no-such-model"], "does not exist"),
    (["--model", A, "--model", B, "--limit", "0"], "--limit must be at least 1"),
])
def test_usage_errors(aws: Clients, capsys: pytest.CaptureFixture[str], argv: list[str],
                      sentence: str) -> None:
    assert main(["results", "compare", f"s3://{BUCKET}/incoming/", *argv]) == 2
    assert sentence in capsys.readouterr().err


def test_a_missing_table_is_said(aws: Clients, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", "compare", f"s3://{BUCKET}/incoming/", "--model", A, "--model", B,
                 "--table", "nope"]) == 1
    assert "table 'nope' does not exist" in capsys.readouterr().err


def test_compare_records_alone() -> None:
    a = [_record("k1", A, "x", 0.5), _record("k2", A, "y", 0.5)]
    b = [_record("k1", B, "x", 0.7)]
    c = compare_records("s3://b/", A, B, a, b)
    assert (c.both, c.agree, c.only_a, c.only_b, c.agreement) == (1, 1, 1, 0, 1.0)
    assert c.labels == () and c.disagreements == ()


def test_the_report_shows_both_models(records: PredictionsTable, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main(["report", f"s3://{BUCKET}/incoming/", "--out", str(out), "--model", A,
                 "--compare-with", B]) == 0
    assert f"with {A} beside {B}: 7 image(s)" in capsys.readouterr().out
    text = (out / "data.js").read_text(encoding="utf-8")
    data = json.loads(text[len("window.IMGPIPE_REPORT = "):].rstrip().rstrip(";"))
    assert (data["model"], data["model_b"], data["both"], data["agree"]) == (A, B, 5, 2)
    rows = {row[0]: row for row in data["items"]}
    assert [data["labels"][i] for i, _ in rows["3.jpg"][5]] == ["Egyptian cat", "other"]
    assert rows["6.jpg"][5] is None  # no record of B
    assert rows["8.jpg"][1] == "rejected"  # A's record; B's is shown beside it
    assert main(["report", f"s3://{BUCKET}/incoming/", "--out", str(out), "--compare-with",
                 "no-such-model"]) == 2
    assert "--compare-with: model source 'no-such-model' does not exist" in \
        capsys.readouterr().err
