"""`imgpipe local --package`: the stack runs the built package, in python3.12 workers of
`.venv-runtime`, and `aws lambda invoke` (the real aws CLI) classifies a photo through it,
as Lambda would run the deployed function."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import ROOT, start_local, stop_local

from .conftest import HOST_ARCH

EVENT = ROOT / "tests" / "events" / "sqs_local_coffee.json"


def test_aws_lambda_invoke_runs_the_packaged_ingest_function(
        package: Callable[[str], Path], runtime_python: Path, tmp_path: Path) -> None:
    root = package(HOST_ARCH)
    stack = start_local(tmp_path, "--package", str(root), "--runtime-python",
                        str(runtime_python))
    try:
        banner = "".join(stack.output)
        assert f"the package {root}" in banner, banner
        stack.aws("s3", "cp", str(ROOT / "samples" / "coffee.jpg"),
                  "s3://imgpipe-local/incoming/coffee.jpg")
        name = next(f["FunctionName"] for f in stack.aws("lambda", "list-functions")["Functions"]
                    if f["Handler"] == "handlers.ingest.handler")
        out = tmp_path / "out.json"
        meta = stack.aws("lambda", "invoke", "--function-name", name,
                         "--payload", f"fileb://{EVENT}", str(out))
        assert meta == {"StatusCode": 200}, meta
        assert json.loads(out.read_text()) == {"batchItemFailures": []}
        item = stack.wait_for_item("imgpipe-predictions",
                                   "s3://imgpipe-local/incoming/coffee.jpg",
                                   "efficientnet-lite0@1")
        assert (item["status"]["S"], item["label"]["S"]) == ("classified", "espresso")
    finally:
        stop_local(stack)
