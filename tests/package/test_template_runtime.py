"""The template's functions are built by the Makefile for the runtime the package targets,
on the architecture the `Architecture` parameter names, and still deploy locally."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from imgpipe.local.provision import DEFAULT_TEMPLATE, load_sam_template
from imgpipe.local.stack import LocalStack, StackOptions, free_port
from tools.lambda_deps import MACHINES, RUNTIME
from tools.lambda_package import sam_architecture

from .conftest import ROOT


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items()
            if r["Type"] in ("AWS::Serverless::Function", "AWS::Lambda::Function")}


def test_template_builds_every_function_with_the_makefile_for_the_runtime() -> None:
    sam = load_sam_template(DEFAULT_TEMPLATE)
    functions = _functions(sam)
    assert set(functions) == {"IngestFunction", "BackfillFunction", "SummaryFunction",
                              "ApiFunction"}
    for name, resource in functions.items():
        props = resource["Properties"]
        assert props["Runtime"] == RUNTIME, name
        assert props["CodeUri"] == "..", name  # the repository root, where the Makefile is
        assert resource["Metadata"]["BuildMethod"] == "makefile", name
        assert props["Architectures"] == [{"Ref": "Architecture"}], name
    makefile = (ROOT / "Makefile").read_text()
    for name in functions:
        assert f"build-{name}" in makefile
    param = sam["Parameters"]["Architecture"]
    assert param["Default"] == "x86_64" and param["AllowedValues"] == ["x86_64", "arm64"]


def test_an_arm64_stack_passes_validation_and_deploys_locally() -> None:
    """moto's CloudFormation ignores a function's Architectures (it reports x86_64), so
    locally this proves the parameter is accepted and the stack comes up, not the value."""
    stack = LocalStack(StackOptions(port=free_port(), log_level="ERROR", poll=False,
                                    parameters={"Architecture": "arm64"}))
    r = stack.start()
    try:
        lam = stack.client("lambda")
        for name in (r.ingest_function, r.backfill_function):
            config = lam.get_function_configuration(FunctionName=name)
            assert config["Runtime"] == RUNTIME, name
    finally:
        stack.stop()


BUILD_GRAPH = """
[function_build_definitions.1]
runtime = "python3.12"
architecture = "arm64"
functions = ["IngestFunction"]

[function_build_definitions.2]
runtime = "python3.12"
architecture = "x86_64"
functions = ["BackfillFunction"]
"""


def test_sam_build_learns_each_functions_architecture_from_sams_build_graph(
        tmp_path: Path) -> None:
    build_dir = tmp_path / ".aws-sam" / "build"
    (tmp_path / ".aws-sam").mkdir()
    (tmp_path / ".aws-sam" / "build.toml").write_text(BUILD_GRAPH)
    assert sam_architecture("IngestFunction", build_dir / "IngestFunction")[0] == "arm64"
    assert sam_architecture("BackfillFunction", build_dir / "BackfillFunction")[0] == "x86_64"


def test_without_a_build_graph_the_machine_decides(tmp_path: Path) -> None:
    """`sam build --use-container` runs in an image of the function's architecture."""
    machine = platform.machine().lower()
    arch, how = sam_architecture("IngestFunction", tmp_path / "build" / "IngestFunction")
    assert arch == {v: k for k, v in MACHINES.items()}[machine]
    assert machine in how
