"""Where the model comes from: a packaged model by name, a local path, or an S3 URI.

Packaged models live in `model/` beside `pipeline/`: the default (fp32
`efficientnet-lite0`) in `model/` itself and others, such as `efficientnet-lite0-int8`, in
sub-directories of it. A source that is exactly one of their names selects it. A folder
holding a file named `NOT-PACKAGED` (`efficientnet-lite2`) is a model of the repository that
the Lambda package leaves out: it is no packaged model, and is chosen by its path (or
published to S3) instead.

An `s3://bucket/prefix/` source is downloaded once per container into a cache directory
(Lambda's `/tmp`), then verified against the manifest's sha256 like any other model, so a
missing or corrupt model fails the container at start-up with a clear message and never
shows up as rejected images.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.errors import ModelError
from pipeline.manifest import ModelManifest, load_manifest

__all__ = ["NOT_PACKAGED", "default_model_dir", "model_id_of", "packaged_models",
           "resolve_model"]

# A model folder under model/ holding a file of this name stays out of the Lambda package
# (tools/lambda_package.py) and so is not a packaged model either.
NOT_PACKAGED = "NOT-PACKAGED"


def default_model_dir() -> Path:
    """The model shipped with the code (`model/` beside `pipeline/`)."""
    return Path(__file__).resolve().parent.parent / "model"


def packaged_models() -> dict[str, Path]:
    """Name -> directory of every model shipped with the code (the default first)."""
    root = default_model_dir()
    found: dict[str, Path] = {}
    for directory in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (directory / "manifest.json").is_file() and not (directory / NOT_PACKAGED).exists():
            found.setdefault(load_manifest(directory).name, directory)
    return found


def _local_path(source: str) -> Path:
    """The directory or manifest a non-S3 source names: a packaged model's name, else a path."""
    if not source:
        return default_model_dir()
    if "/" not in source and os.sep not in source:
        named = packaged_models().get(source)
        if named is not None:
            return named
    path = Path(source).expanduser()
    if not path.exists():
        unpackaged = default_model_dir() / source
        if "/" not in source and os.sep not in source and (unpackaged / NOT_PACKAGED).is_file():
            raise ModelError(
                f"model {source!r} is not packaged with the functions (too large for the "
                f"Lambda package): give its folder, {unpackaged}, or publish it with "
                "`imgpipe model publish` and give the s3:// folder (IMGPIPE_MODEL, --model, "
                "ModelSource)"
            )
        names = ", ".join(packaged_models())
        raise ModelError(
            f"model source {source!r} does not exist: give a packaged model's name ({names}), "
            "a directory or manifest.json, or an s3:// prefix (IMGPIPE_MODEL, --model)"
        )
    return path


def model_id_of(source: str = "") -> str:
    """The `name@version` of a local model source (default: the packaged model), read from
    its manifest alone: no download, no hash. Commands use it to name the records to read."""
    return load_manifest(_local_path(source)).model_id


def resolve_model(
    source: str = "", cache_dir: str | Path = "/tmp/imgpipe-model", s3_client: Any = None
) -> ModelManifest:
    """Load and verify the manifest named by `source` (see module doc).

    `source` is empty (the default model), a packaged model's name
    (`efficientnet-lite0-int8`), a directory holding `manifest.json`, a path to a manifest
    file, or `s3://bucket/prefix` holding `manifest.json`, its labels file and the ONNX
    file. The returned manifest's file has been checked against its sha256.
    """
    if source.startswith("s3://"):
        manifest = _from_s3(source, Path(cache_dir), s3_client)
    else:
        manifest = load_manifest(_local_path(source))
    manifest.verify_file()
    return manifest


def _from_s3(uri: str, cache_dir: Path, s3_client: Any) -> ModelManifest:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ModelError(f"model source {uri!r} has no bucket (expected s3://bucket/prefix)")
    prefix = prefix.rstrip("/")
    if prefix.endswith("manifest.json"):
        prefix = prefix[: -len("manifest.json")].rstrip("/")
    if s3_client is None:
        import boto3

        s3_client = boto3.client("s3")
    target = cache_dir / bucket / (prefix or "_root")
    manifest_path = target / "manifest.json"

    def key(name: str) -> str:
        return f"{prefix}/{name}" if prefix else name

    if manifest_path.is_file():
        # Already downloaded by an earlier invocation of this container; if it verifies,
        # reuse it, otherwise fetch again.
        try:
            cached = load_manifest(manifest_path)
            cached.verify_file()
            return cached
        except ModelError:
            shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    _download(s3_client, bucket, key("manifest.json"), manifest_path, uri)
    import json

    raw = json.loads(manifest_path.read_text("utf-8"))
    for name in filter(None, [raw.get("file"), raw.get("labels_file")]):
        if "/" in str(name) or str(name).startswith("."):
            raise ModelError(f"model manifest at {uri}: file name {name!r} must be a plain name")
        _download(s3_client, bucket, key(str(name)), target / str(name), uri)
    return load_manifest(manifest_path)


def _download(s3_client: Any, bucket: str, key: str, dest: Path, uri: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    os.close(fd)
    try:
        s3_client.download_file(bucket, key, tmp)
        os.replace(tmp, dest)
    except Exception as e:
        Path(tmp).unlink(missing_ok=True)
        raise ModelError(f"cannot download the model from {uri}: s3://{bucket}/{key}: {e}") from e
