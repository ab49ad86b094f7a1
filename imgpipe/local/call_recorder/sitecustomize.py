"""Started by Python itself in the local stack's function workers, and only there (the stack
puts this folder on their PYTHONPATH when it records calls, `imgpipe local --record-calls
FILE`): each AWS call the function makes becomes one JSON line in IMGPIPE_LOCAL_CALL_LOG,
with the function's name, the service, the operation and the parameters that name its
resources. tests/iam_calls.py checks each line against the function role's policies, which
the emulator does not enforce.

Standard library only, and botocore is not imported here: the hook is set when the
function's own code first imports `botocore.session`, so a worker's start-up is unchanged.
Presigned requests are recorded too: S3 authorizes them with the signer's (the function
role's) permissions when they are used.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import json
import os
import sys
import threading
from typing import Any

_LOG = os.environ.get("IMGPIPE_LOCAL_CALL_LOG", "")
# Request parameters that name a resource (S3, DynamoDB, SQS, Step Functions, Lambda, KMS).
_RESOURCE_PARAMS = ("Bucket", "Key", "VersionId", "CopySource", "Prefix", "TableName",
                    "IndexName", "QueueUrl", "QueueName", "stateMachineArn", "executionArn",
                    "mapRunArn", "FunctionName", "KeyId")

_presigning = threading.local()


def _write(record: dict[str, Any]) -> None:
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write of one line with O_APPEND: workers do not interleave
    finally:
        os.close(fd)


def _resources(params: dict[str, Any]) -> dict[str, Any]:
    out = {k: params[k] for k in _RESOURCE_PARAMS if k in params}
    if isinstance(params.get("RequestItems"), dict):  # BatchGetItem, BatchWriteItem
        out["TableNames"] = sorted(params["RequestItems"])
    if isinstance(params.get("TransactItems"), list):  # TransactGetItems, TransactWriteItems
        out["TableNames"] = sorted({op["TableName"] for item in params["TransactItems"]
                                    for op in item.values() if "TableName" in op})
    return out


def _record(region: str, service: str, operation: str, params: dict[str, Any]) -> None:
    _write({"function": os.environ.get("AWS_LAMBDA_FUNCTION_NAME", ""), "region": region,
            "service": service, "operation": operation, "params": _resources(params)})


def _on_call(region: str, params: dict[str, Any], model: Any, **_: Any) -> None:
    # A presigned URL passes here too, under the operation it allows.
    if not getattr(_presigning, "active", False):
        _record(region, model.service_model.signing_name, model.name, params)


def _watch(client: Any) -> Any:
    region = client.meta.region_name
    service = client.meta.service_model.signing_name
    client.meta.events.register("provide-client-params", functools.partial(_on_call, region))
    if service == "s3":
        post = client.generate_presigned_post

        def generate_presigned_post(Bucket: str, Key: str, *a: Any, **kw: Any) -> Any:  # noqa: N803
            # botocore builds the POST from CreateBucket's model: that is not what it allows
            _record(region, service, "PutObject", {"Bucket": Bucket, "Key": Key})
            _presigning.active = True
            try:
                return post(Bucket, Key, *a, **kw)
            finally:
                _presigning.active = False

        client.generate_presigned_post = generate_presigned_post
    return client


def _patch(module: Any) -> None:
    create_client = module.Session.create_client

    def create_and_watch(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _watch(create_client(self, *args, **kwargs))

    module.Session.create_client = create_and_watch


class _WhenImported(importlib.abc.MetaPathFinder):
    """Patches `botocore.session` right after it is first imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "botocore.session":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch
        return spec


if _LOG:
    sys.meta_path.insert(0, _WhenImported())
