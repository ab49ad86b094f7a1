"""The packaged handlers work in a clean python3.12 that has only what Lambda's runtime
gives (`.venv-runtime`: its boto3 and the runtime interface client) with nothing but the
package on sys.path, against AWS APIs served by the local stack.

The stack runs without its poller, so the messages S3 queues are left alone and the
handler sees only the event given here."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from imgpipe.local.stack import LocalStack, StackOptions, free_port
from pipeline.modelstore import model_id_of
from tests.conftest import load_event

from .conftest import HOST_ARCH, ROOT

SAMPLES = ROOT / "samples"

# Runs in the runtime's interpreter: `-I` keeps the environment, the user's site and the
# working directory off sys.path; the package goes first, as /var/task does on Lambda.
_INVOKE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import importlib

    class Context:
        function_name = sys.argv[3]
        function_version = "$LATEST"
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + sys.argv[3]
        memory_limit_in_mb = 2048
        aws_request_id = "c0ffee00-0000-4000-8000-000000000001"
        log_group_name = "/aws/lambda/" + sys.argv[3]
        log_stream_name = "test"

        def get_remaining_time_in_millis(self):
            return 120_000

    module = importlib.import_module(sys.argv[2])
    result = module.handler(json.load(sys.stdin), Context())
    files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())})
    print(json.dumps({"result": result, "files": files,
                      "prefixes": [sys.prefix, sys.base_prefix]}))
""")


@dataclass
class Invocation:
    result: Any
    files: list[str]  # every module file the process loaded
    prefixes: list[str]  # the runtime venv and its base interpreter


@dataclass
class Stack:
    stack: LocalStack
    env: dict[str, str]  # what Lambda would set for the ingest function, pointed at the stack
    api_env: dict[str, str]  # the same for the HTTP API's function

    def client(self, service: str) -> Any:
        return self.stack.client(service)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    local = LocalStack(StackOptions(port=free_port(), log_level="WARNING", poll=False))
    resources = local.start()
    try:
        base = {"PATH": os.environ.get("PATH", ""),
                "HOME": str(tmp_path_factory.mktemp("home"))}
        env = {**base, **local.function_environment(resources.function_environment)}
        api_env = {**base, **local.function_environment(
            resources.function(resources.api_function).environment)}
        yield Stack(local, env, api_env)
    finally:
        local.stop()


def invoke(python: Path, package_root: Path, handler_module: str, function: str,
           event: dict[str, Any], env: dict[str, str], cwd: Path) -> Invocation:
    done = subprocess.run(
        [str(python), "-I", "-c", _INVOKE, str(package_root), handler_module, function],
        input=json.dumps(event), capture_output=True, text=True, env=env, cwd=cwd,
        timeout=300,
    )
    assert done.returncode == 0, f"{handler_module} failed:\n{done.stderr[-4000:]}"
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    return Invocation(doc["result"], doc["files"], doc["prefixes"])


def assert_only_package_and_runtime(inv: Invocation, package_root: Path) -> None:
    """Everything came from the package, the runtime venv or the standard library: nothing
    from the repository checkout or the development venv."""
    allowed = [package_root.resolve(), *(Path(p).resolve() for p in inv.prefixes)]
    assert ROOT.resolve() / ".venv-runtime" in allowed
    strays = [f for f in inv.files if f and not any(Path(f).resolve().is_relative_to(a)
                                                    for a in allowed)]
    assert not strays, f"modules loaded from outside the package and the runtime: {strays[:5]}"
    ours = [f for f in inv.files if "/pipeline/" in f or "/handlers/" in f]
    assert ours and all(Path(f).resolve().is_relative_to(package_root.resolve()) for f in ours)
    boto3 = [f for f in inv.files if f.endswith("boto3/__init__.py")]
    assert boto3 and Path(boto3[0]).resolve().is_relative_to(package_root.resolve()), \
        "the bundled boto3 must shadow the runtime's"


def put_sample(stack: Stack, key: str, sample: Path | bytes) -> dict[str, Any]:
    s3 = stack.client("s3")
    body = sample if isinstance(sample, bytes) else sample.read_bytes()
    bucket = stack.stack.resources.bucket  # type: ignore[union-attr]
    put = s3.put_object(Bucket=bucket, Key=key, Body=body)
    return {"bucket": bucket, "key": key, "etag": put["ETag"].strip('"'), "size": len(body),
            "version_id": put.get("VersionId")}


def get_item(stack: Stack, image: str) -> dict[str, Any]:
    table = stack.stack.resources.table  # type: ignore[union-attr]
    item = stack.client("dynamodb").get_item(
        TableName=table, ConsistentRead=True,
        Key={"image": {"S": image}, "model": {"S": model_id_of()}},
    ).get("Item")
    assert item is not None, f"no record for {image}"
    return {k: next(iter(v.values())) for k, v in item.items()}


def output_document(stack: Stack, bucket: str, key: str) -> dict[str, Any]:
    body = stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    doc: dict[str, Any] = json.loads(body)
    return doc


def sqs_event_for(obj: dict[str, Any]) -> dict[str, Any]:
    """The SQS batch fixture with one message: the S3 notification of `obj`, keys
    URL-encoded as S3 sends them."""
    notification = load_event("s3_put_single")
    s3 = notification["Records"][0]["s3"]
    s3["bucket"]["name"] = obj["bucket"]
    s3["bucket"]["arn"] = f"arn:aws:s3:::{obj['bucket']}"
    s3["object"].update(key=quote_plus(obj["key"], safe="/"), size=obj["size"],
                        eTag=obj["etag"])
    if obj["version_id"]:
        s3["object"]["versionId"] = obj["version_id"]
    else:
        s3["object"].pop("versionId", None)
    batch = load_event("sqs_batch_s3_put")
    message = copy.deepcopy(batch["Records"][0])
    message["body"] = json.dumps(notification)
    return {"Records": [message]}


def test_packaged_ingest_handler_classifies_an_uploaded_photo(
        stack: Stack, package: Callable[[str], Path], runtime_python: Path,
        tmp_path: Path) -> None:
    root = package(HOST_ARCH)
    obj = put_sample(stack, "incoming/from the package/coffee.jpg", SAMPLES / "coffee.jpg")
    event = sqs_event_for(obj)
    inv = invoke(runtime_python, root, "handlers.ingest", "IngestFunction", event,
                 stack.env, tmp_path)
    assert inv.result == {"batchItemFailures": []}
    assert_only_package_and_runtime(inv, root)

    image = f"s3://{obj['bucket']}/{obj['key']}"
    item = get_item(stack, image)
    assert (item["status"], item["label"], item["etag"]) == ("classified", "espresso",
                                                             obj["etag"])
    assert float(item["score"]) > 0.5
    doc = output_document(stack, obj["bucket"], item["output_key"])
    assert item["output_key"].startswith("predictions/")
    assert (doc["image"], doc["status"], doc["label"]) == (image, "classified", "espresso")


def test_packaged_backfill_handler_classifies_an_item_batch(
        stack: Stack, package: Callable[[str], Path], runtime_python: Path,
        tmp_path: Path) -> None:
    root = package(HOST_ARCH)
    photo = put_sample(stack, "archive/2019/chelsea.jpg", SAMPLES / "chelsea.jpg")
    notes = put_sample(stack, "archive/2019/notes.txt", b"not a photo, just words\n")
    event = {
        "Items": [{"Key": o["key"], "Size": o["size"], "Etag": f'"{o["etag"]}"'}
                  for o in (photo, notes)] + [{"Key": "archive/2019/", "Size": 0}],
        "BatchInput": {"bucket": photo["bucket"], "overwrite": False},
    }
    inv = invoke(runtime_python, root, "handlers.backfill", "BackfillFunction", event,
                 stack.env, tmp_path)
    assert_only_package_and_runtime(inv, root)
    counts = inv.result["counts"]
    assert (counts["classified"], counts["rejected"], counts["ignored"]) == (1, 1, 1)
    assert sum(counts.values()) == 3
    assert inv.result["model"] == model_id_of()

    cat = get_item(stack, f"s3://{photo['bucket']}/{photo['key']}")
    assert (cat["status"], cat["label"]) == ("classified", "tiger cat")
    doc = output_document(stack, photo["bucket"], cat["output_key"])
    assert doc["label"] == "tiger cat"
    text = get_item(stack, f"s3://{notes['bucket']}/{notes['key']}")
    assert text["status"] == "rejected" and "not an image" in text["error"]


def test_the_lean_summary_package_adds_up_a_result_writer_output(
        stack: Stack, lean_package: Callable[[str], Path], runtime_python: Path,
        tmp_path: Path) -> None:
    """The summary function's package has no ONNX Runtime, numpy, Pillow or model: its
    handler still runs, reads a Distributed Map's ResultWriter output (AWS's documented
    manifest and SUCCEEDED_n.json) and loads none of them."""
    root = lean_package(HOST_ARCH)
    local = stack.stack
    assert local.resources is not None
    bucket = local.resources.bucket
    summary = next(f for f in local.resources.functions
                   if f.handler == "handlers.summary.handler")
    env = {**{k: stack.env[k] for k in ("PATH", "HOME")},
           **local.function_environment(summary.environment)}
    run = "predictions/_backfill/run-1/0a1b2c3d"
    children = [{"counts": {"classified": 60, "skipped": 3, "rejected": 1}, "model": "m@1"},
                {"counts": {"classified": 2, "gone": 1, "ignored": 4}, "model": "m@1"}]
    results = [{
        "ExecutionArn": f"arn:aws:states:us-east-1:123456789012:express:backfill/run-1/{i}",
        "Input": json.dumps({"Items": []}), "InputDetails": {"Included": True},
        "Name": str(i), "Output": json.dumps(out), "OutputDetails": {"Included": True},
        "RedriveCount": 0, "RedriveStatus": "NOT_REDRIVABLE",
        "RedriveStatusReason": "Execution is SUCCEEDED and cannot be redriven",
        "StartDate": "2026-12-04T15:00:00.000Z", "StopDate": "2026-12-04T15:00:01.000Z",
        "StateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:backfill/run-1",
        "Status": "SUCCEEDED"} for i, out in enumerate(children)]
    s3 = stack.client("s3")
    s3.put_object(Bucket=bucket, Key=f"{run}/SUCCEEDED_0.json", Body=json.dumps(results))
    manifest = {"DestinationBucket": bucket,
                "MapRunArn": "arn:aws:states:us-east-1:123456789012:mapRun:backfill/run-1:0a1b",
                "ResultFiles": {"FAILED": [], "PENDING": [], "SUCCEEDED": [
                    {"Key": f"{run}/SUCCEEDED_0.json", "Size": len(json.dumps(results))}]}}
    s3.put_object(Bucket=bucket, Key=f"{run}/manifest.json", Body=json.dumps(manifest))
    event = {"map_run": {"ResultWriterDetails": {"Bucket": bucket,
                                                 "Key": f"{run}/manifest.json"}},
             "request": {"bucket": bucket, "prefix": "archive/"}}
    inv = invoke(runtime_python, root, "handlers.summary", "SummaryFunction", event, env,
                 tmp_path)
    assert inv.result["counts"]["classified"] == 62
    assert inv.result["images"] == 67  # everything but the ignored
    assert_only_package_and_runtime(inv, root)
    heavy = [f for f in inv.files
             if any(f"/{name}/" in f for name in ("numpy", "PIL", "onnxruntime"))]
    assert not heavy, heavy[:3]


def test_a_package_on_the_wrong_architecture_says_so(
        package: Callable[[str], Path], runtime_python: Path, tmp_path: Path) -> None:
    """Built for one architecture, deployed on the other: the import fails with the reason
    and the fix, before numpy's own (misleading) error could."""
    root = package(HOST_ARCH)
    other = "aarch64" if HOST_ARCH == "x86_64" else "x86_64"
    done = subprocess.run(
        [str(runtime_python), "-I", "-c",
         f"import sys, platform; sys.path.insert(0, {str(root)!r}); "
         f"platform.machine = lambda: {other!r}; import handlers.ingest"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert done.returncode != 0
    assert f"built for {HOST_ARCH} but runs on {other}" in done.stderr
    assert "Architecture=" in done.stderr
    assert "numpy" not in done.stderr.splitlines()[-1]


def test_packaged_api_handler_classifies_a_posted_photo_and_serves_the_page(
        stack: Stack, package: Callable[[str], Path], runtime_python: Path,
        tmp_path: Path) -> None:
    from imgpipe.local.frontdoor import url_event

    root = package(HOST_ARCH)
    event = url_event("POST", "/classify", {"Content-Type": "image/jpeg"},
                      (SAMPLES / "coffee.jpg").read_bytes(), "127.0.0.1", "lambda-url.local")
    inv = invoke(runtime_python, root, "handlers.api", "ApiFunction", event, stack.api_env,
                 tmp_path)
    assert_only_package_and_runtime(inv, root)
    assert inv.result["statusCode"] == 200, inv.result
    answer = json.loads(inv.result["body"])
    assert (answer["label"], answer["format"], answer["stored"]) == ("espresso", "JPEG", False)

    page = url_event("GET", "/", {}, b"", "127.0.0.1", "lambda-url.local")
    inv = invoke(runtime_python, root, "handlers.api", "ApiFunction", page, stack.api_env,
                 tmp_path)
    assert inv.result["statusCode"] == 200
    assert '<script src="app.js"' in inv.result["body"]
