"""`imgpipe model publish DIR s3://BUCKET/PREFIX/NAME/VERSION/`: a checked model folder in S3,
laid out as `pipeline.modelstore` loads it (`ModelSource`, `--model s3://...`).

A version is immutable: records are keyed by `name@version`, so two different models under
one version would mix their results. The folder's `manifest.json` is written last and only
if none is there yet (S3's conditional write, `If-None-Match: *`): until it exists, the
folder is no model, and once it exists, nobody replaces it. Publishing the same manifest
again completes a folder an interrupted publish left short, and changes nothing else.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.aws import error_code
from pipeline.errors import ImgpipeError
from pipeline.manifest import ModelManifest, sha256_file

__all__ = ["MODEL_FOLDER", "PublishError", "Published", "destination", "publish_folder"]

# The template's ModelSource AllowedPattern for an S3 folder (tests/unit check they agree).
MODEL_FOLDER = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([A-Za-z0-9!_.'()-]+/)+$"


class PublishError(ImgpipeError):
    """A refusal of `model publish`, said as a sentence."""


@dataclass(frozen=True)
class Published:
    uri: str
    files: tuple[str, ...]  # keys written by this run
    already: bool  # the same manifest was there: nothing replaced


def destination(uri: str, manifest: ModelManifest) -> tuple[str, str]:
    """(bucket, prefix ending with '/') for `uri`, which must be a folder ending with the
    manifest's name and version."""
    folder = uri if uri.endswith("/") else uri + "/"
    if not re.fullmatch(MODEL_FOLDER, folder):
        raise PublishError(
            f"{uri} is not a folder the template's ModelSource accepts: s3://BUCKET/PREFIX/"
            f"{manifest.name}/{manifest.version}/ with a lower-case bucket name and folder "
            "names of letters, digits and ! _ . ' ( ) -")
    bucket, _, prefix = folder[len("s3://"):].partition("/")
    parts = prefix.rstrip("/").split("/")
    if parts[-2:] != [manifest.name, manifest.version]:
        above = "".join(f"{p}/" for p in parts[:-2])
        raise PublishError(
            f"{folder} does not end with the model's name and version: publish "
            f"{manifest.model_id} to s3://{bucket}/{above}{manifest.name}/{manifest.version}/ "
            "(each version has a folder of its own)")
    return bucket, prefix


def publish_folder(manifest: ModelManifest, manifest_path: Path, uri: str, s3: Any,
                   cache_dir: Path | None = None) -> Published:
    """Upload the ONNX file, the labels file and then the manifest; refuse to replace
    another model under the same version; load the result as the functions would."""
    bucket, prefix = destination(uri, manifest)
    folder = f"s3://{bucket}/{prefix}"
    names = [manifest.file] + ([manifest.labels_file] if manifest.labels_file else [])
    for name in names:
        if "/" in name or name.startswith("."):
            raise PublishError(f"the manifest names {name!r}: publish needs plain file names in "
                               f"{manifest_path.parent} (the functions download them by name)")
    body = manifest_path.read_bytes()
    ours = json.loads(body)
    existing = _read_manifest(s3, bucket, prefix + "manifest.json", folder)
    if existing is not None:
        _same_model(existing, ours, manifest, folder)
    written: list[str] = []
    for name in names:
        key = prefix + name
        path = (manifest.directory or Path(".")) / name
        if existing is not None and _exists(s3, bucket, key, folder):
            continue  # already published: a version's files are never replaced
        _put(s3, bucket, key, path, folder)
        written.append(key)
    if existing is None:
        try:
            s3.put_object(Bucket=bucket, Key=prefix + "manifest.json", Body=body,
                          ContentType="application/json", IfNoneMatch="*",
                          ChecksumSHA256=_b64_sha256(body))
        except Exception as e:
            if error_code(e) not in ("PreconditionFailed", "ConditionalRequestConflict", "412",
                                     "409"):
                raise _write_error(e, f"{folder}manifest.json") from e
            # Someone published this version meanwhile: theirs stands if it is another model.
            raced = _read_manifest(s3, bucket, prefix + "manifest.json", folder)
            if raced is not None:
                _same_model(raced, ours, manifest, folder)
        else:
            written.append(prefix + "manifest.json")
    _verify(folder, s3, manifest, cache_dir)
    return Published(folder, tuple(written), already=existing is not None)


def _same_model(theirs: dict[str, Any], ours: dict[str, Any], manifest: ModelManifest,
                folder: str) -> None:
    """Refuse unless the manifest at `folder` is this one (the labels file and the ONNX
    file are compared when the folder is loaded back)."""
    sha = str(theirs.get("sha256", "")).lower()
    if sha != manifest.sha256:
        raise PublishError(
            f"{folder} already holds {manifest.model_id} with another ONNX file (sha256 "
            f"{sha[:12]}..., this one {manifest.sha256[:12]}...): a published version is "
            f"never replaced; give the model a new version (`imgpipe model init ... --version "
            f"N`) and publish it to its own folder")
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        raise PublishError(
            f"{folder} already holds {manifest.model_id} with the same ONNX file but another "
            f"manifest ({', '.join(differ)} differ): its records would mean two things; give "
            "the model a new version and publish it to its own folder")


def _read_manifest(s3: Any, bucket: str, key: str, folder: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as e:
        if error_code(e) in ("NoSuchKey", "404"):
            return None
        if error_code(e) == "NoSuchBucket":
            raise PublishError(f"bucket {bucket!r} does not exist: create it, or check the "
                               "name, --endpoint-url and --region") from e
        raise _write_error(e, f"{folder}manifest.json", reading=True) from e
    try:
        raw = json.loads(body)
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise PublishError(f"{folder}manifest.json is not a manifest (not a JSON object): "
                           "this folder holds something else; publish to another one")
    return raw


def _exists(s3: Any, bucket: str, key: str, folder: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as e:
        if error_code(e) in ("NoSuchKey", "404"):
            return False
        raise _write_error(e, folder + key.rsplit("/", 1)[-1], reading=True) from e


def _put(s3: Any, bucket: str, key: str, path: Path, folder: str) -> None:
    """One file, in one PutObject with its SHA-256, which S3 checks on arrival."""
    checksum = base64.b64encode(bytes.fromhex(sha256_file(path))).decode()
    with open(path, "rb") as f:
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=f, ChecksumSHA256=checksum)
        except Exception as e:
            raise _write_error(e, folder + path.name) from e


def _b64_sha256(data: bytes) -> str:
    import hashlib

    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _write_error(e: Exception, where: str, reading: bool = False) -> ImgpipeError:
    code = error_code(e)
    verb = "read" if reading else "write"
    if code == "NoSuchBucket":
        return PublishError(f"the bucket of {where} does not exist: create it, or check the "
                            "name, --endpoint-url and --region")
    if code in ("AccessDenied", "403"):
        return PublishError(f"not allowed to {verb} {where} (AccessDenied): the credentials "
                            f"need s3:GetObject and s3:PutObject on that folder")
    detail = f"{code}: {e}" if code else f"{type(e).__name__}: {e}"
    return PublishError(f"cannot {verb} {where} ({detail})")


def _verify(folder: str, s3: Any, manifest: ModelManifest, cache_dir: Path | None) -> None:
    """Load the published folder the way the functions do (download, sha256, manifest)."""
    from pipeline.modelstore import resolve_model

    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="imgpipe-publish-") as tmp:
        try:
            loaded = resolve_model(folder, tmp, s3)
        except ImgpipeError as e:
            raise PublishError(f"the published folder does not load: {e}") from e
    if loaded.sha256 != manifest.sha256 or loaded.labels != manifest.labels:
        raise PublishError(f"{folder} loads as another model than {manifest.model_id}: "
                           "publish it to a new version's folder")
