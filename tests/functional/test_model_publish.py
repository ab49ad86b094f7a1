"""`imgpipe model publish` against S3 (moto in-process): the folder the functions load, a
version never replaced, and each refusal."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from imgpipe.cli import main
from imgpipe.publish import MODEL_FOLDER
from pipeline.aws import Clients
from pipeline.factory import build_classifier
from pipeline.settings import Settings
from tests.functional.conftest import BUCKET, SAMPLES
from tests.tiny_models import RESNET_IMAGENET, TinyModel, make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
URI = f"s3://{BUCKET}/models/tiny-resnet/18/"


def _model(tmp_path: Path, name: str = "m", **changes: Any) -> TinyModel:
    fields = {**RESNET_IMAGENET, **changes}
    labels = fields.pop("labels")
    folder = tmp_path / name
    folder.mkdir()
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    model = make_tiny_model(folder, {**fields, "labels": labels})
    raw = json.loads(model.manifest_path.read_text())
    del raw["labels"]
    raw["labels_file"] = "labels.txt"
    model.manifest_path.write_text(json.dumps(raw, indent=2))
    return model


def _keys(aws: Clients, prefix: str = "models/") -> dict[str, bytes]:
    listed = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: aws.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for o in listed}


def test_a_published_folder_is_what_the_functions_load(
        aws: Clients, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(tmp_path)
    assert main(["model", "publish", str(model.directory), URI]) == 0
    out = capsys.readouterr().out
    assert "usable" in out and f"published tiny-resnet@18 to {URI} (3 file(s) written)" in out
    assert f"ModelSource={URI}" in out and f"--model {URI}" in out
    stored = _keys(aws)
    assert set(stored) == {f"models/tiny-resnet/18/{n}"
                           for n in ("tiny.onnx", "labels.txt", "manifest.json")}
    assert stored["models/tiny-resnet/18/manifest.json"] == model.manifest_path.read_bytes()
    # ModelSource=s3://... : the functions' own wiring, from a fresh cache.
    settings = Settings(model_source=URI, model_cache_dir=str(tmp_path / "cache"))
    with build_classifier(settings, aws.s3) as clf:
        assert clf.model_id == "tiny-resnet@18"
        assert clf.manifest.labels == tuple(RESNET_IMAGENET["labels"])
        prediction = clf.classify_bytes((SAMPLES / "coffee.jpg").read_bytes())
    with build_classifier(Settings(model_source=str(model.directory))) as local:
        assert local.classify_bytes((SAMPLES / "coffee.jpg").read_bytes()) == prediction
    capsys.readouterr()
    monkeypatch.setenv("IMGPIPE_MODEL_CACHE", str(tmp_path / "check-cache"))
    assert main(["model", "check", URI, str(SAMPLES / "coffee.jpg")]) == 0  # check reads S3 too
    assert f"model tiny-resnet@18 from {URI}" in capsys.readouterr().out


def test_publishing_the_same_model_again_changes_nothing(
        aws: Clients, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path)
    assert main(["model", "publish", str(model.directory), URI]) == 0
    before = aws.s3.head_object(Bucket=BUCKET, Key="models/tiny-resnet/18/manifest.json")
    capsys.readouterr()
    assert main(["model", "publish", str(model.directory), URI.rstrip("/")]) == 0
    assert "is already published at" in capsys.readouterr().out
    after = aws.s3.head_object(Bucket=BUCKET, Key="models/tiny-resnet/18/manifest.json")
    assert after["LastModified"] == before["LastModified"]


def test_an_interrupted_publish_is_completed(aws: Clients, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The manifest is written last: a folder without one is no model yet, and publishing
    again writes it all."""
    model = _model(tmp_path)
    aws.s3.put_object(Bucket=BUCKET, Key="models/tiny-resnet/18/tiny.onnx", Body=b"partial")
    assert main(["model", "publish", str(model.directory), URI]) == 0
    assert _keys(aws)["models/tiny-resnet/18/tiny.onnx"] == model.onnx_path.read_bytes()


def test_another_onnx_file_under_a_published_version_is_refused(
        aws: Clients, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "publish", str(_model(tmp_path).directory), URI]) == 0
    published = _keys(aws)
    other = _model(tmp_path, "other", input_name="pixels")  # another graph, same name@version
    capsys.readouterr()
    assert main(["model", "publish", str(other.directory), URI]) == 1
    err = capsys.readouterr().err
    assert "already holds tiny-resnet@18 with another ONNX file" in err
    assert "give the model a new version" in err
    assert _keys(aws) == published


def test_another_manifest_for_the_same_file_is_refused(
        aws: Clients, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path)
    assert main(["model", "publish", str(model.directory), URI]) == 0
    published = _keys(aws)
    raw = json.loads(model.manifest_path.read_text())
    raw["normalize"] = {"scale": 1 / 255}
    model.manifest_path.write_text(json.dumps(raw))
    capsys.readouterr()
    assert main(["model", "publish", str(model.directory), URI]) == 1
    assert "the same ONNX file but another manifest (normalize differ)" in \
        capsys.readouterr().err
    assert _keys(aws) == published


def test_a_publish_that_loses_the_race_for_the_version_is_refused(
        aws: Clients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Someone else's manifest lands between the read and the write: the conditional write
    (If-None-Match: *) fails and theirs stands."""
    from imgpipe import publish

    theirs = _model(tmp_path, "theirs", input_name="pixels")
    real_put = publish._put

    def put_then_someone_publishes(s3: Any, bucket: str, key: str, path: Path,
                                   folder: str) -> None:
        real_put(s3, bucket, key, path, folder)
        if key.endswith("labels.txt"):
            s3.put_object(Bucket=bucket, Key="models/tiny-resnet/18/manifest.json",
                          Body=theirs.manifest_path.read_bytes())

    monkeypatch.setattr(publish, "_put", put_then_someone_publishes)
    assert main(["model", "publish", str(_model(tmp_path).directory), URI]) == 1
    assert "already holds tiny-resnet@18 with another ONNX file" in capsys.readouterr().err
    stored = _keys(aws)["models/tiny-resnet/18/manifest.json"]
    assert stored == theirs.manifest_path.read_bytes()


@pytest.mark.parametrize(("uri", "sentence"), [
    (f"s3://{BUCKET}/models/tiny-resnet/19/", "does not end with the model's name and version: "
     f"publish tiny-resnet@18 to s3://{BUCKET}/models/tiny-resnet/18/"),
    (f"s3://{BUCKET}/tiny-resnet/", "does not end with the model's name and version"),
    (f"s3://{BUCKET}/my models/tiny-resnet/18/", "is not a folder the template's ModelSource"),
    ("s3://Upper/tiny-resnet/18/", "is not a folder the template's ModelSource"),
])
def test_a_destination_that_is_not_the_versions_folder_is_refused(
        aws: Clients, tmp_path: Path, capsys: pytest.CaptureFixture[str], uri: str,
        sentence: str) -> None:
    assert main(["model", "publish", str(_model(tmp_path).directory), uri]) == 1
    assert sentence in capsys.readouterr().err
    assert _keys(aws, "") == {}


def test_an_unusable_model_is_not_published(aws: Clients, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path)
    raw = json.loads(model.manifest_path.read_text())
    raw["layout"] = "NHWC"
    model.manifest_path.write_text(json.dumps(raw))
    assert main(["model", "publish", str(model.directory), URI]) == 1
    captured = capsys.readouterr()
    assert "not usable" in captured.out and "not published" in captured.err
    assert _keys(aws, "") == {}


def test_the_check_runs_on_the_photos_given(aws: Clients, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path)
    assert main(["model", "publish", str(model.directory), URI,
                 str(SAMPLES / "coffee.jpg")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert [r.split()[0] for r in rows] == ["coffee.jpg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["model", "publish", str(model.directory), URI, str(empty)]) == 2
    assert "no photos to check the model with" in capsys.readouterr().err


def test_a_missing_bucket_or_manifest_is_said(aws: Clients, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path)
    assert main(["model", "publish", str(model.directory),
                 "s3://no-such-bucket/tiny-resnet/18/"]) == 1
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err
    assert main(["model", "publish", str(tmp_path), URI]) == 2
    assert "holds no manifest.json: write one with `imgpipe model init" in \
        capsys.readouterr().err


def test_the_folder_pattern_is_the_templates_model_source_pattern() -> None:
    template = (ROOT / "infra" / "template.yaml").read_text()
    allowed = re.search(r"ModelSource:\n(?:\s+.*\n)*?\s+AllowedPattern: \"(.*)\"", template)
    assert allowed is not None
    s3_alternative = allowed.group(1).split("|")[-1]
    assert "^" + s3_alternative.lstrip("^") == MODEL_FOLDER
