"""`imgpipe classify FILE...`: output formats and exit codes (0 ok, 1 rejected, 2 usage)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgpipe.cli import main
from pipeline.settings import ENV_VARS
from tests.tiny_models import KERAS_NHWC, TinyModel

ROOT = Path(__file__).resolve().parents[2]
COFFEE = str(ROOT / "samples" / "coffee.jpg")
CHELSEA = str(ROOT / "samples" / "chelsea.jpg")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads IMGPIPE_* from the environment; start from none of them."""
    for var in ENV_VARS.values():
        if var.startswith("IMGPIPE_"):
            monkeypatch.delenv(var, raising=False)


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, str]:
    text = tmp_path / "notes.txt"
    text.write_text("shopping list: coffee, milk\n", encoding="utf-8")
    return {"text": str(text), "missing": str(tmp_path / "nope.jpg")}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["classify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_table_names_labels(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, COFFEE, CHELSEA)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "model efficientnet-lite0@1"
    assert lines[1].split() == ["FILE", "LABEL", "SCORE"]
    coffee_row = next(line for line in lines if line.startswith(COFFEE))
    assert coffee_row.split()[1] == "espresso"
    score = float(coffee_row.split()[-1])
    assert 0 < score <= 1
    assert any(line.startswith(CHELSEA) for line in lines)
    assert err == ""


def test_json_lines_have_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json", "--top-k", "3", COFFEE, CHELSEA)
    assert code == 0
    docs = json_lines(out)
    assert [d["file"] for d in docs] == [COFFEE, CHELSEA]
    for doc in docs:
        assert doc["status"] == "classified"
        assert isinstance(doc["label"], str) and doc["label"]
        assert isinstance(doc["score"], float) and 0 < doc["score"] <= 1
        assert doc["error"] is None
        assert doc["model"] == "efficientnet-lite0@1"
        assert len(doc["top_k"]) == 3
        for entry in doc["top_k"]:
            assert isinstance(entry["label"], str)
            assert isinstance(entry["index"], int) and 0 <= entry["index"] < 1000
            assert isinstance(entry["score"], float)
        assert doc["top_k"][0]["label"] == doc["label"]
        assert doc["top_k"][0]["score"] == doc["score"]
        assert [e["score"] for e in doc["top_k"]] == sorted(
            (e["score"] for e in doc["top_k"]), reverse=True)
    assert docs[0]["label"] == "espresso"
    assert (docs[0]["width"], docs[0]["height"], docs[0]["format"]) == (600, 400, "JPEG")


def test_rejected_files_exit_1_and_every_file_is_printed(
    capsys: pytest.CaptureFixture[str], bad_files: dict[str, str]
) -> None:
    files = [COFFEE, bad_files["text"], bad_files["missing"], CHELSEA]
    code, out, err = run(capsys, *files)
    assert code == 1
    lines = out.splitlines()
    assert lines[1].split() == ["FILE", "LABEL", "SCORE", "ERROR"]
    rows = {f: next(line for line in lines[2:] if line.startswith(f + " ")) for f in files}
    assert rows[COFFEE].split()[1] == "espresso"
    assert "not an image: the data is plain text" in rows[bad_files["text"]]
    assert "no such file" in rows[bad_files["missing"]]
    for f in (bad_files["text"], bad_files["missing"]):
        assert rows[f].split()[1:3] == ["-", "-"]
    assert err.strip() == "imgpipe classify: 2 of 4 file(s) rejected"


def test_a_directory_is_classified_recursively_images_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    album = tmp_path / "album"
    (album / "2024" / "summer").mkdir(parents=True)
    (album / ".thumbs").mkdir()
    shutil.copy(COFFEE, album / "coffee.JPG")
    shutil.copy(CHELSEA, album / "2024" / "summer" / "cat.jpeg")
    shutil.copy(COFFEE, album / ".thumbs" / "hidden.jpg")
    (album / "notes.txt").write_text("not a photo\n", encoding="utf-8")
    (album / "make_samples.py").write_text("print('hi')\n", encoding="utf-8")
    code, out, err = run(capsys, "--json", str(album))
    assert code == 0, err  # the text and script files are not picked up, so nothing rejected
    docs = json_lines(out)
    assert [d["file"] for d in docs] == [str(album / "2024" / "summer" / "cat.jpeg"),
                                         str(album / "coffee.JPG")]
    assert [d["label"] for d in docs] == ["tiger cat", "espresso"]


def test_a_directory_without_images_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    code, _, err = run(capsys, str(tmp_path))
    assert code == 1
    assert "no images (.jpg, .jpeg, .png" in err and str(tmp_path) in err


@pytest.mark.parametrize("url", ["https://example.com/cat.jpg", "s3://bucket/cat.jpg"])
def test_urls_are_refused_with_what_to_do(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, out, err = run(capsys, COFFEE, url)
    assert code == 2 and out == ""
    assert f"{url} is a URL" in err and "download it first" in err
    assert "imgpipe backfill" in err


def test_rejected_files_in_json(
    capsys: pytest.CaptureFixture[str], bad_files: dict[str, str]
) -> None:
    code, out, _ = run(capsys, "--json", bad_files["text"], COFFEE)
    assert code == 1
    rejected, classified = json_lines(out)
    assert rejected == {
        "file": bad_files["text"], "model": "efficientnet-lite0@1", "status": "rejected",
        "label": None, "score": None, "top_k": [],
        "error": "not an image: the data is plain text",
    }
    assert classified["status"] == "classified" and classified["label"] == "espresso"


def test_oversized_file_is_rejected_by_the_configured_limit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGPIPE_MAX_OBJECT_BYTES", "1000")
    code, out, _ = run(capsys, "--json", COFFEE)
    assert code == 1
    (doc,) = json_lines(out)
    assert doc["status"] == "rejected" and doc["error"].startswith("file too large")


def test_no_files_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["classify"])
    assert info.value.code == 2
    assert "FILE" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--top-k", "0"]])
def test_bad_numbers_are_usage_errors(
    capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    code, out, err = run(capsys, *option, COFFEE)
    assert code == 2
    assert out == ""
    assert "must be at least 1" in err


def test_bring_your_own_model(
    capsys: pytest.CaptureFixture[str], tiny_model: Callable[..., TinyModel]
) -> None:
    model = tiny_model(KERAS_NHWC)
    code, out, _ = run(capsys, "--model", str(model.directory), "--json", COFFEE, "--batch-size",
                       "1")
    assert code == 0
    (doc,) = json_lines(out)
    assert doc["model"] == "tiny-keras@2"
    assert {e["label"] for e in doc["top_k"]} == set(KERAS_NHWC["labels"])
    assert sum(e["score"] for e in doc["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_missing_model_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "--model", str(tmp_path / "nowhere"), COFFEE)
    assert code == 1
    assert out == ""
    assert err.startswith("imgpipe classify: model source") and "does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    text = tmp_path / "readme.txt"
    text.write_text("not a picture\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPIPE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "imgpipe", "classify", "--json", COFFEE, str(text)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 1, proc.stderr
    docs = json_lines(proc.stdout)
    assert [(d["file"], d["status"]) for d in docs] == [
        (COFFEE, "classified"), (str(text), "rejected")]
    assert docs[0]["label"] == "espresso"
    assert "1 of 2 file(s) rejected" in proc.stderr


def test_an_oversized_file_is_reported_with_its_own_size(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    big = tmp_path / "huge.jpg"
    with big.open("wb") as f:
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(62_914_560)  # sparse: 60 MiB on paper, nothing on disk
    code, out, _ = run(capsys, "--json", str(big))
    assert code == 1
    (doc,) = json_lines(out)
    assert doc["error"] == ("file too large: 62,914,560 bytes exceeds the 52,428,800-byte "
                            "limit (IMGPIPE_MAX_OBJECT_BYTES)")


def test_a_packaged_model_is_chosen_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--model", "efficientnet-lite0-int8", COFFEE)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "model efficientnet-lite0-int8@1"
    assert next(line for line in lines if line.startswith(COFFEE)).split()[1] == "espresso"
