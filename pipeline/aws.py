"""Adapters between the core and AWS: S3 objects in, JSON documents and DynamoDB items out.

Every AWS error is translated into the core's error family in one place
(`translate_client_error`), so nothing else in `pipeline/` matches error codes. Clients are
built by `create_clients` (the factory) or passed in, never at import time.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.documents import RECORD_TOKEN_META, DocumentState
from pipeline.errors import (
    AccessDeniedError,
    GoneError,
    ImgpipeError,
    SupersededError,
    TooLargeError,
    TransientError,
    too_large_message,
)
from pipeline.events import ObjectRef
from pipeline.settings import Settings

__all__ = [
    "Clients",
    "client_for",
    "presigning_client",
    "read_object",
    "FetchedObject",
    "S3ObjectStore",
    "create_clients",
    "error_code",
    "translate_client_error",
]

# A missing key is 404 only for a caller with s3:ListBucket on the bucket (the template
# grants it); without it S3 answers 403, the same as a denial. So 403 is never "gone".
_GONE = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "AccessDeniedException", "AllAccessDisabled",
           "KMS.AccessDeniedException", "KMS.DisabledException", "KMS.NotFoundException",
           "KMS.InvalidStateException", "KMS.KMSInvalidStateException"}
# IAM's wording in a denial's message (S3 includes it for callers of the bucket's account):
# "User: ARN is not authorized to perform: ACTION on resource: ARN because ..."
_DENIAL_DETAIL = re.compile(r"not authorized to perform:?\s+(?P<action>[\w:*-]+)"
                            r"(?:\s+on resource:?\s+(?P<resource>[^\s,;]+))?")
_SUPERSEDED = {"PreconditionFailed", "412"}
_TRANSIENT = {
    "SlowDown", "503", "500", "InternalError", "ServiceUnavailable", "RequestTimeout",
    "RequestTimeoutException", "Throttling", "ThrottlingException", "ThrottledException",
    "ProvisionedThroughputExceededException", "RequestLimitExceeded", "TooManyRequestsException",
    "TransactionConflictException", "LimitExceededException",
}


def translate_client_error(error: Exception, what: str) -> ImgpipeError:
    """Map a botocore error to `AccessDeniedError` / `GoneError` / `SupersededError` /
    `TransientError`.

    Unknown errors are treated as transient: redelivery (and, after maxReceiveCount, the
    DLQ with the body intact) loses nothing, while a wrong `rejected` would.
    """
    code = error_code(error)
    if code in _DENIED:
        return AccessDeniedError(denial_message(error, what, code))
    if code in _GONE:
        return GoneError(f"{what}: the bucket does not exist ({code})" if code == "NoSuchBucket"
                         else f"{what}: the object no longer exists ({code})")
    if code in _SUPERSEDED:
        return SupersededError(f"{what}: the object changed since the event was sent ({code})")
    if code in _TRANSIENT:
        return TransientError(f"{what}: {code}, will retry")
    return TransientError(f"{what}: {code or type(error).__name__}: {error}")


def denial_message(error: Exception, what: str, code: str) -> str:
    """The sentence for a 403: what was denied, on what, and where to grant it."""
    message = _error_message(error)
    detail = _DENIAL_DETAIL.search(message)
    action = detail.group("action") if detail else ""
    resource = (detail.group("resource") or "") if detail else ""
    if code.startswith("KMS.") and code != "KMS.AccessDeniedException":
        # The key itself is unusable (disabled, pending deletion, not found): no grant
        # would help, the key's owner must act.
        return (f"{what}: {code}: the bucket's KMS key cannot be used: "
                f"{message or 'no detail given'}")
    if action.startswith("kms:") or code.startswith("KMS.") or "kms" in message.lower():
        key = resource if resource.startswith("arn:") and ":key/" in resource else \
            "the bucket's KMS key"
        needed = action or "kms:Decrypt"
        return (f"{what}: access denied ({code}): the bucket encrypts with {key} and this "
                f"function's role may not use {needed} on it; set the template parameter "
                f"KmsKeyArn to that key (and allow the role in the key's policy)")
    if action:
        on = f" on {resource}" if resource else ""
        return (f"{what}: access denied ({code}): this function's role may not {action}{on}; "
                f"grant it, or lift the policy that denies it")
    return (f"{what}: access denied ({code}): the role's policy, the bucket policy or the "
            f"object's KMS key refuses it (a missing object would answer 404)")


def _error_message(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        return str(response.get("Error", {}).get("Message", "") or "")
    return ""


def error_code(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        err = response.get("Error", {})
        code = str(err.get("Code", "") or "")
        if code:
            return code
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return ""


@dataclass(frozen=True)
class Clients:
    s3: Any
    dynamodb: Any


_CLIENTS: dict[tuple[str, str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(service: str, settings: Settings, session: Any | None = None) -> Any:
    """A boto3 client with retries on throttling (standard mode: backoff with jitter),
    pointed at `settings.endpoint_url` when set (the local stack).

    Without an explicit session, clients are made once per (service, region, endpoint) per
    process from one shared session: building a client loads its service model from disk
    (~0.1-0.2 s of CPU), and boto3 clients are thread-safe.
    """
    if session is not None:
        return _new_client(service, settings, session)
    key = (service, settings.region, settings.endpoint_url)
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            import boto3

            _CLIENTS[key] = _new_client(service, settings, boto3.session.Session())
        return _CLIENTS[key]


def _new_client(service: str, settings: Settings, session: Any) -> Any:
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=32,
    )
    kwargs: dict[str, Any] = {"config": config, "region_name": settings.region}
    if settings.endpoint_url:
        kwargs["endpoint_url"] = settings.endpoint_url
    return session.client(service, **kwargs)


def presigning_client(settings: Settings, bucket: str, session: Any | None = None) -> Any:
    """The S3 client that signs the upload page's presigned POSTs: Signature Version 4 at
    the bucket's regional endpoint.

    Without `signature_version="s3v4"`, botocore signs a presigned POST with SigV2
    (`AWSAccessKeyId`, `signature`) in us-east-1, eu-west-1 and the other regions older
    than 2014, and S3 refuses SigV2 for every bucket created since June 2020. Its default
    URL is the global endpoint (bucket.s3.amazonaws.com), which answers a bucket in another
    region with redirects for a while after the bucket is created; a browser's form POST
    cannot follow them. Virtual-hosted style at the regional endpoint, except for a bucket
    name with dots (TLS certificates cover one label) and for the local emulator (an IP
    address has no subdomains): path style there.
    """
    import boto3
    from botocore.config import Config

    style = "path" if settings.endpoint_url or "." in bucket else "virtual"
    config = Config(signature_version="s3v4",
                    s3={"addressing_style": style, "us_east_1_regional_endpoint": "regional"})
    kwargs: dict[str, Any] = {"config": config, "region_name": settings.region}
    if settings.endpoint_url:
        kwargs["endpoint_url"] = settings.endpoint_url
    return (session or boto3.session.Session()).client("s3", **kwargs)


def create_clients(settings: Settings, session: Any | None = None) -> Clients:
    return Clients(s3=client_for("s3", settings, session),
                   dynamodb=client_for("dynamodb", settings, session))


@dataclass(frozen=True)
class FetchedObject:
    data: bytes
    etag: str | None
    version_id: str | None


def read_object(client: Any, ref: ObjectRef, max_bytes: int) -> FetchedObject:
    """Read `ref` as it was when the event was sent.

    With a known ETag the read is conditional (`IfMatch`): an object overwritten in
    between raises `SupersededError` (its own event will handle the new content). An
    object over `max_bytes` is refused without downloading it.
    """
    if ref.size is not None and ref.size > max_bytes:
        raise TooLargeError(too_large_message(ref.size, max_bytes))
    kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
    if ref.etag:
        kwargs["IfMatch"] = f'"{ref.etag}"'
    try:
        resp = client.get_object(**kwargs)
    except Exception as e:
        raise translate_client_error(e, f"reading {ref.uri}") from e
    body = resp["Body"]
    try:
        length = int(resp.get("ContentLength", 0) or 0)
        if length > max_bytes:
            raise TooLargeError(too_large_message(length, max_bytes))
        data = body.read()
    except ImgpipeError:
        raise
    except Exception as e:  # connection reset mid-body and friends
        raise TransientError(f"reading {ref.uri}: {type(e).__name__}: {e}") from e
    finally:
        body.close()
    etag = str(resp.get("ETag", "")).strip('"') or ref.etag
    return FetchedObject(data=data, etag=etag, version_id=resp.get("VersionId") or None)


class S3ObjectStore:
    """Reads input objects and writes output documents."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, ref: ObjectRef, max_bytes: int) -> FetchedObject:
        return read_object(self.client, ref, max_bytes)

    def current_etag(self, bucket: str, key: str) -> str | None:
        """The ETag of the object at `key` now (HEAD); None when there is none."""
        head = self._head(bucket, key)
        return None if head is None else str(head.get("ETag", "")).strip('"')

    def head_document(self, bucket: str, key: str) -> DocumentState | None:
        """The output document at `key`: its ETag and the record token it was written for."""
        head = self._head(bucket, key)
        if head is None:
            return None
        token = str((head.get("Metadata") or {}).get(RECORD_TOKEN_META, ""))
        return DocumentState(etag=str(head.get("ETag", "")).strip('"'), token=token)

    def put_json(
        self,
        bucket: str,
        key: str,
        document: Mapping[str, Any],
        *,
        token: str = "",
        if_match: str | None = None,
        conditional: bool = False,
    ) -> bool:
        """Write a JSON document; False when the condition failed (someone wrote in between).

        `conditional`: only over the document whose ETag is `if_match`, or (None) only
        where there is no document yet (S3 conditional writes).
        """
        body = json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body,
                                  "ContentType": "application/json"}
        if token:
            kwargs["Metadata"] = {RECORD_TOKEN_META: token}
        if conditional:
            if if_match is None:
                kwargs["IfNoneMatch"] = "*"
            else:
                kwargs["IfMatch"] = f'"{if_match}"'
        try:
            self.client.put_object(**kwargs)
        except Exception as e:
            if conditional and _lost_condition(e):
                return False
            raise translate_client_error(e, f"writing s3://{bucket}/{key}") from e
        return True

    def put_lines(self, bucket: str, key: str, documents: Sequence[Mapping[str, Any]]) -> None:
        """Write documents as JSON Lines (one compact JSON object a line) in one PUT."""
        body = "".join(json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n"
                       for d in documents).encode("utf-8")
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=body,
                                   ContentType="application/x-ndjson")
        except Exception as e:
            raise translate_client_error(e, f"writing s3://{bucket}/{key}") from e

    def delete_document(self, bucket: str, key: str, if_match: str) -> bool:
        """Delete the document whose ETag is `if_match`; False if it changed in between."""
        try:
            self.client.delete_object(Bucket=bucket, Key=key, IfMatch=f'"{if_match}"')
        except Exception as e:
            if _lost_condition(e):
                return False
            if error_code(e) in ("NoSuchKey", "404"):
                return True
            raise translate_client_error(e, f"deleting s3://{bucket}/{key}") from e
        return True

    def _head(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=bucket, Key=key))
        except Exception as e:
            # The roles have s3:ListBucket, so a key that does not exist is 404; a 403 is a
            # denial and is raised (AccessDeniedError), never taken for "no document".
            if error_code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise translate_client_error(e, f"looking at s3://{bucket}/{key}") from e


def _lost_condition(error: Exception) -> bool:
    """A conditional S3 write lost a race: 412, or 409 ConditionalRequestConflict."""
    return error_code(error) in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                  "409")
