"""`imgpipe report` against moto: the records of a prefix, thumbnails from S3, the files of
an offline page; a second report reuses the thumbnails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import handlers.ingest
from imgpipe.cli import main
from tests.functional.conftest import BUCKET, MODEL, Context, Harness, s3_event, sample, sqs_event


def report_data(out: Path) -> dict[str, Any]:
    text = (out / "data.js").read_text(encoding="utf-8")
    assert text.startswith("window.IMGPIPE_REPORT = ") and text.rstrip().endswith(";")
    doc: dict[str, Any] = json.loads(text[len("window.IMGPIPE_REPORT = "):].rstrip()
                                     .rstrip(";"))
    return doc


def test_report_of_a_prefix(harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    objs = [harness.upload(f"incoming/{n}", sample(n)) for n in ("coffee.jpg", "chelsea.jpg")]
    objs.append(harness.upload("incoming/notes.txt", b"a shopping list"))
    other = harness.upload("elsewhere/coffee.jpg", sample("coffee.jpg"))
    event, _ = sqs_event(s3_event(*objs), s3_event(other))
    handlers.ingest.handler(event, Context())

    out = tmp_path / "report"
    assert main(["report", f"s3://{BUCKET}/incoming/", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 image(s) (2 classified, 1 rejected), 2 thumbnail(s) (2 new)" in printed
    assert f"open {(out / 'index.html').resolve()}" in printed

    data = report_data(out)
    assert data["source"] == f"s3://{BUCKET}/incoming/" and data["model"] == MODEL
    assert data["counts"] == {"classified": 2, "rejected": 1}
    assert data["first"] <= data["last"]
    assert set(data["timings"]) == {"fetch_ms", "decode_ms", "inference_ms",
                                    "event_to_record_ms"}
    rows = {row[0]: row for row in data["items"]}
    assert set(rows) == {"coffee.jpg", "chelsea.jpg", "notes.txt"}  # not elsewhere/
    key, status, thumb, top, error = rows["coffee.jpg"]
    assert status == "classified" and error == "" and len(top) == 3
    assert data["labels"][top[0][0]] == "espresso" and top[0][1] > 0.9
    assert (out / thumb).stat().st_size < 10_000
    assert rows["notes.txt"][1:] == ["rejected", "", [], "not an image: the data is plain text"]
    for name in ("index.html", "report.css", "report.js"):
        assert (out / name).exists()

    # A second report into the same folder reads no image again.
    reads: list[str] = []
    real_get = harness.s3.get_object

    def counting_get(**kwargs: Any) -> Any:
        reads.append(kwargs["Key"])
        return real_get(**kwargs)

    import pipeline.aws

    monkeypatch.setattr(harness.s3, "get_object", counting_get)
    monkeypatch.setattr(pipeline.aws, "create_clients", lambda settings: harness.clients)
    assert main(["report", f"s3://{BUCKET}/incoming/", "--out", str(out)]) == 0
    assert "2 thumbnail(s) (0 new)" in capsys.readouterr().out
    assert reads == []


def test_a_missing_table_is_one_sentence(harness: Harness, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", f"s3://{BUCKET}/incoming/", "--out", str(tmp_path),
                 "--table", "no-such-table"])
    assert code == 1
    assert "table 'no-such-table' does not exist" in capsys.readouterr().err


def test_a_missing_bucket_is_one_sentence_and_no_report(
        harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It wrote an empty report and exited 0 (backfill and reconcile said it)."""
    out = tmp_path / "report"
    assert main(["report", "s3://missing-bucket/x/", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("imgpipe report: bucket 'missing-bucket' does not exist: check its")
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_uri_that_is_not_s3_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["report", "/photos", "--out", str(tmp_path)]) == 2


def test_out_naming_a_file_is_one_line_and_a_usage_error(
        harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "report.html"
    a_file.write_text("mine")
    assert main(["report", f"s3://{BUCKET}/incoming/", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"imgpipe report: --out {a_file} is a file; give a folder")
    assert len(err.strip().splitlines()) == 1 and a_file.read_text() == "mine"


def test_out_under_a_file_is_one_line_and_a_failure(
        harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["report", f"s3://{BUCKET}/incoming/", "--out", str(a_file / "report")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"imgpipe report: cannot write the report into {a_file / 'report'}")
    assert len(err.strip().splitlines()) == 1


def test_bidi_controls_in_keys_are_shown_not_obeyed() -> None:
    """"photo<U+202E>gpj.exe" would display as "photoexe.jpg": the report shows the code
    point instead of letting it reorder the name."""
    from imgpipe.report.collect import report_document
    from pipeline.events import ObjectRef
    from pipeline.records import rejected_record

    controls = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]
    keys = ["photo\u202egpj.exe", *(f"a{c}b.jpg" for c in controls)]
    rows = [rejected_record(ObjectRef(BUCKET, f"incoming/{k}"), MODEL, "not an image")
            for k in keys]
    data = report_document(rows, {}, source=f"s3://{BUCKET}/incoming/", model=MODEL)
    shown = [item[0] for item in data["items"]]
    assert shown[0] == "photo<U+202E>gpj.exe"
    assert shown[1:] == [f"a<U+{ord(c):04X}>b.jpg" for c in controls]
    assert not any(c in json.dumps(data, ensure_ascii=False) for c in controls)
