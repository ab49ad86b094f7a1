"""The HTTP API: one function behind a Lambda function URL (payload format 2.0).

    POST /classify            image bytes (Content-Type image/*) or {"s3": "s3://bucket/key"}
    POST /classify?store=true the same, and an accepted image is put into the input prefix
    POST /uploads             {"filename", "content_type"} -> a presigned POST into the input
                              prefix (the upload page's route to the real event path)
    GET  /results?image=URI   the record of an image once the event path has written it,
                              else {"status": "pending"} (200 both)
    GET  /, /app.js, /app.css the upload page (web/)

The classification is the core's (`Classifier.classify_bytes`: the same decode, limits and
sentences as the event path) and the answer is the core's record document. Every refusal
is a 4xx whose `error` is the core's sentence: 400 for data that is not a usable image (or
a request that is not one), 413 over a size limit, 415 for a format or content type not
accepted, 403/404 for an s3 URI this function may not read / that does not exist. Nothing
is written unless `store=true` is asked for and the image was accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.aws import read_object
from pipeline.classifier import Classifier
from pipeline.errors import (
    AccessDeniedError,
    GoneError,
    PermanentError,
    TooLargeError,
    TransientError,
    UnsupportedFormatError,
)
from pipeline.events import ObjectRef
from pipeline.records import classified_record
from pipeline.table import read_one

__all__ = ["HttpApi", "MAX_BODY_BYTES", "CONTENT_TYPES", "WEB_ROOT", "Response"]

# Lambda's invoke payload is 6 MB (6,291,456 bytes) and a function URL passes a binary body
# base64-encoded (4 bytes for every 3) inside the JSON event: 4 MiB of image is 5.6 MB of
# event, which leaves room for the headers. Larger files go to S3 first ({"s3": ...}).
MAX_BODY_BYTES = 4 * 1024 * 1024
# Presigned uploads are bounded by S3 (content-length-range), not by Lambda.
PRESIGN_EXPIRES_S = 300
CONTENT_TYPES: dict[str, str] = {
    "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG", "image/png": "PNG",
    "image/webp": "WEBP", "image/gif": "GIF", "image/bmp": "BMP", "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF",
}
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
               "TIFF": ".tif"}
# What ?store=true stores as ContentType: the decoded format's, not the request's claim.
_FORMAT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                 "GIF": "image/gif", "BMP": "image/bmp", "TIFF": "image/tiff"}
_ACCEPTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"
WEB_ROOT = Path(__file__).resolve().parents[1] / "web"
_STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js",
           "/app.css": "app.css"}
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
# Fields of the record that describe a stored object or document: not part of an answer
# about bytes that were never stored.
_OBJECT_FIELDS = ("etag", "version_id", "sequencer", "output_key")

Response = dict[str, Any]


class ApiError(Exception):
    """A request refused with `status` and a sentence for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Request:
        """A function URL / HTTP API payload 2.0 event."""
        http = (event.get("requestContext") or {}).get("http") or {}
        raw = event.get("body") or ""
        try:
            body = base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") \
                else raw.encode("utf-8")
        except (binascii.Error, ValueError):
            raise ApiError(400, "the request body is not valid base64") from None
        return cls(method=str(http.get("method") or "GET").upper(),
                   path=str(event.get("rawPath") or http.get("path") or "/"),
                   query=dict(event.get("queryStringParameters") or {}),
                   headers={k.lower(): str(v) for k, v in (event.get("headers") or {}).items()},
                   body=body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass(frozen=True)
class HttpApi:
    """Routes payload 2.0 events; built once per container (`pipeline.factory.build_api`)."""

    classifier: Classifier
    s3: Any  # boto3 S3 client
    dynamodb: Any  # boto3 DynamoDB client
    bucket: str  # the pipeline's bucket: the only one read, written and presigned
    input_prefix: str
    table: str
    max_object_bytes: int  # for {"s3": ...} reads and presigned uploads
    # signs POST /uploads (`pipeline.aws.presigning_client`: SigV4, regional endpoint);
    # None: `s3`, which must then sign with SigV4 itself
    presigner: Any = None
    clock: Callable[[], float] = time.perf_counter
    web_root: Path = WEB_ROOT

    def handle(self, event: Mapping[str, Any]) -> Response:
        try:
            request = Request.from_event(event)
            route = (request.method, request.path)
            if route == ("POST", "/classify"):
                return self.classify(request)
            if route == ("POST", "/uploads"):
                return self.presign(request)
            if route == ("GET", "/results"):
                return self.result(request)
            if request.method in ("GET", "HEAD") and request.path in _STATIC:
                return self.static(_STATIC[request.path])
            known = {"/classify", "/uploads", "/results", *_STATIC}
            if request.path in known:
                raise ApiError(405, f"{request.method} is not allowed on {request.path}")
            raise ApiError(404, f"no route {request.path}: the API has POST /classify, "
                                f"POST /uploads, GET /results and the page at /")
        except ApiError as e:
            return json_response(e.status, {"error": str(e)})
        except TransientError as e:
            return json_response(503, {"error": f"{e}; try again in a moment"})

    # ---- POST /classify ---------------------------------------------------------------

    def classify(self, request: Request) -> Response:
        started = self.clock()
        data, source = self._input(request)
        read_s = self.clock() - started
        try:
            prediction = self.classifier.classify_bytes(data)
        except PermanentError as e:
            raise ApiError(_status_of(e), str(e)) from None
        classify_s = self.clock() - started - read_s
        stored = False
        ref = source
        if ref is None:
            ref = ObjectRef(self.bucket, self._key_for(data, prediction.format), size=len(data))
            if request.query.get("store", "").lower() in ("true", "1", "yes"):
                ctype = _FORMAT_TYPES.get(prediction.format, request.content_type)
                self.s3.put_object(Bucket=self.bucket, Key=ref.key, Body=data,
                                   ContentType=ctype)
                stored = True
        record = classified_record(ref, self.classifier.model_id, prediction, output_key="")
        answer = {k: v for k, v in record.to_document().items() if k not in _OBJECT_FIELDS}
        if source is None and not stored:
            answer["image"] = None  # the bytes exist nowhere but in this request
        answer["stored"] = stored
        if not answer.get("timings"):  # the record's own, when the core measures them
            answer["timings"] = {"read_ms": round(read_s * 1000, 1),
                                 "classify_ms": round(classify_s * 1000, 1)}
        return json_response(200, answer)

    def _input(self, request: Request) -> tuple[bytes, ObjectRef | None]:
        """(bytes, the S3 object they came from or None) for a classify request."""
        ctype = request.content_type
        if ctype == "application/json":
            ref = self._s3_ref(_json_body(request).get("s3"))
            try:
                return read_object(self.s3, ref, self.max_object_bytes).data, ref
            except GoneError:
                raise ApiError(404, f"{ref.uri} does not exist") from None
            except AccessDeniedError as e:  # a policy or KMS key refuses; not "try again"
                raise ApiError(403, str(e)) from None
            except PermanentError as e:
                raise ApiError(_status_of(e), str(e)) from None
        if ctype.startswith("image/"):
            if ctype not in CONTENT_TYPES:
                raise ApiError(415, f"Content-Type {ctype} is not accepted: send {_ACCEPTED}")
            if len(request.body) > MAX_BODY_BYTES:
                raise ApiError(413, too_large_for_body(len(request.body), self.bucket,
                                                       self.input_prefix))
            return request.body, None
        if not request.body:
            raise ApiError(400, "empty request: send the image bytes with Content-Type "
                                "image/jpeg (or png, webp, gif, bmp, tiff), or JSON "
                                '{"s3": "s3://bucket/key"}')
        raise ApiError(415, f"Content-Type {ctype or '(none)'} is not accepted: send the "
                            f"image bytes with Content-Type image/jpeg (or png, webp, gif, "
                            f'bmp, tiff), or JSON {{"s3": "s3://bucket/key"}} with '
                            f"Content-Type application/json")

    def _s3_ref(self, uri: Any) -> ObjectRef:
        """The object an `s3://bucket/key` names, if this function may read it."""
        if not isinstance(uri, str) or not uri.startswith("s3://") or "/" not in uri[5:]:
            raise ApiError(400, 'expected JSON {"s3": "s3://bucket/key"}')
        bucket, key = uri[5:].split("/", 1)
        if bucket != self.bucket or not key.startswith(self.input_prefix) or not key[
                len(self.input_prefix):]:
            raise ApiError(403, f"this API reads only objects under "
                                f"s3://{self.bucket}/{self.input_prefix}, not {uri}")
        return ObjectRef(bucket, key)

    def _key_for(self, data: bytes, fmt: str) -> str:
        """Where ?store=true puts bytes: named by their content, so a repeat is one object."""
        digest = hashlib.sha256(data).hexdigest()[:32]
        return f"{self.input_prefix}api/{digest}{_EXTENSIONS.get(fmt, '')}"

    # ---- POST /uploads ----------------------------------------------------------------

    def presign(self, request: Request) -> Response:
        """A presigned POST for one file into the input prefix: only the content type
        asked for (an accepted image type), 1 byte to the pipeline's size limit."""
        doc = _json_body(request)
        name = str(doc.get("filename") or "photo")
        ctype = str(doc.get("content_type") or "").lower()
        if ctype not in CONTENT_TYPES:
            shown = ctype or "an unknown type"
            raise ApiError(415, f"{name} is {shown}, not an image this pipeline accepts: "
                                f"choose a {_ACCEPTED} file")
        key = f"{self.input_prefix}uploads/{uuid.uuid4().hex}/{_safe_name(name)}"
        post = (self.presigner or self.s3).generate_presigned_post(
            Bucket=self.bucket, Key=key, Fields={"Content-Type": ctype},
            Conditions=[{"Content-Type": ctype},
                        ["content-length-range", 1, self.max_object_bytes]],
            ExpiresIn=PRESIGN_EXPIRES_S)
        return json_response(200, {"url": post["url"], "fields": post["fields"],
                                   "image": f"s3://{self.bucket}/{key}",
                                   "max_bytes": self.max_object_bytes,
                                   "expires_in": PRESIGN_EXPIRES_S})

    # ---- GET /results -----------------------------------------------------------------

    def result(self, request: Request) -> Response:
        """The image's record (the event path's), or 200 with status pending until it is
        written: a poller (the upload page) asks many times before it is there, and a 404
        for each ask was a console error in the browser."""
        if not request.query.get("image"):
            raise ApiError(400, "GET /results needs the image whose record you want: "
                                f"?image=s3://{self.bucket}/{self.input_prefix}...")
        ref = self._s3_ref(request.query.get("image"))
        model = self.classifier.model_id
        record = read_one(self.dynamodb, self.table, ref.uri, model)
        if record is None:
            return json_response(200, {"image": ref.uri, "model": model, "status": "pending"})
        return json_response(200, record.to_document())

    # ---- the page ---------------------------------------------------------------------

    def static(self, name: str) -> Response:
        path = self.web_root / name
        return {"statusCode": 200, "body": path.read_text(encoding="utf-8"),
                "headers": {"content-type": _STATIC_TYPES[path.suffix],
                            "cache-control": "no-cache"}}


def json_response(status: int, body: Mapping[str, Any]) -> Response:
    return {"statusCode": status, "headers": {"content-type": "application/json"},
            "body": json.dumps(body)}


def too_large_for_body(size: int, bucket: str, prefix: str) -> str:
    return (f"file too large for the request body: {size:,} bytes exceeds the "
            f"{MAX_BODY_BYTES:,}-byte (4 MiB) limit of POST /classify (Lambda's 6 MB "
            f"payload, base64-encoded); upload it to s3://{bucket}/{prefix} and send "
            f'{{"s3": "s3://{bucket}/{prefix}..."}}')


def _status_of(error: PermanentError) -> int:
    if isinstance(error, TooLargeError):
        return 413
    if isinstance(error, UnsupportedFormatError):
        return 415
    return 400


def _json_body(request: Request) -> dict[str, Any]:
    if not request.body:
        raise ApiError(400, "empty request: expected a JSON object")
    try:
        doc = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "the body is JSON nested too deeply to read: expected a JSON "
                            "object") from None
    except ValueError as e:  # e.g. an integer past Python's 4,300-digit limit
        raise ApiError(400, f"the body is JSON that cannot be read ({e}): expected a JSON "
                            "object") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "expected a JSON object")
    return doc


def _safe_name(name: str) -> str:
    """The file's own name, reduced to characters every tool quotes the same way."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", name.rsplit("/", 1)[-1]).strip(".-")
    return base[-100:] or "photo"
