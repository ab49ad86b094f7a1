"""The template's gates: each check returns what is wrong (empty = passes), so the tests can
run them on infra/template.yaml and on deliberately broken copies of it.

    python -m tests.template_gates      # checkov on the translated template; prints counts

- `checkov_report`: checkov (its own venv, .venv-checkov: it pins an old boto3) on the
  template translated by aws-sam-translator (raw SAM hides the generated roles from it),
  skipping only what infra/checkov-skips.txt lists, one reason a line.
- `retry_violations`: every error class a handler raises for the state machine to retry
  (subclasses of `pipeline.errors.StateMachineRetry`) is named in a Retry, with backoff, of
  the tasks that run item batches.
- `visibility_violations`: the ingest queue's visibility timeout is at least
  6 x FunctionTimeout + MaximumBatchingWindowInSeconds for every value the parameters allow.
- `iam_violations`: each function role allows exactly the AWS actions its code calls,
  found by following the handler's calls through the project's code, function by function
  (botocore's operation names, mapped to IAM actions), plus what AWS evaluates with the
  role for those calls (`REQUIRED_WITH`, `ALLOWED_WITH`).
- `state_machine_violations`: each state machine's role allows exactly what Step Functions
  itself calls with it for the definition's states (`STATE_CALLS`: ItemReader,
  ResultWriter, a Distributed Map's child executions, Lambda tasks), from AWS's
  documentation; the service's calls are no code of ours, so `iam_violations` cannot see
  them.
- `event_source_violations`: the role of a function fed by an SQS event source mapping
  lets Lambda's poller receive and delete the queue's messages.
- `wildcard_violations`: no role statement has a `*` resource.
"""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "template.yaml"
SKIPS = ROOT / "infra" / "checkov-skips.txt"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

# ---------------------------------------------------------------- checkov


def checkov_skips(path: Path = SKIPS) -> dict[str, str]:
    """infra/checkov-skips.txt: `CKV_ID  reason` a line; `#` comments and blank lines."""
    skips: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        check_id, _, reason = line.partition(" ")
        skips[check_id] = reason.strip()
    return skips


def checkov_report(translated: Mapping[str, Any],
                   skips: Mapping[str, str] | None = None) -> dict[str, Any]:
    """checkov's JSON report for a translated template (its `summary` holds the counts).

    The skips are written into every resource's Metadata (checkov's inline suppression,
    with the reason as its comment), so checkov reports each suppressed finding as
    skipped instead of leaving it out of the counts."""
    if not CHECKOV.exists():
        raise RuntimeError(f"{CHECKOV} is missing: `make .venv-checkov/.installed` creates it")
    skips = checkov_skips() if skips is None else skips
    template = copy.deepcopy(dict(translated))
    suppress = [{"id": check_id, "comment": reason} for check_id, reason in skips.items()]
    for resource in template["Resources"].values():
        resource.setdefault("Metadata", {})["checkov"] = {"skip": suppress}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "template.json"
        path.write_text(json.dumps(template, indent=1), encoding="utf-8")
        cmd = [str(CHECKOV), "--file", str(path), "--framework", "cloudformation",
               "--output", "json", "--compact", "--skip-download"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={"PATH": str(CHECKOV.parent), "HOME": tmp})
    out = done.stdout.strip()
    if not out.startswith("{"):
        raise RuntimeError(f"checkov gave no report (exit {done.returncode}):\n"
                           f"{done.stdout}\n{done.stderr}")
    report: dict[str, Any] = json.loads(out)
    return report


def failed_checks(report: Mapping[str, Any]) -> list[str]:
    return sorted(f"{c['check_id']} {c['resource']}"
                  for c in report.get("results", {}).get("failed_checks", []))


# ---------------------------------------------------------------- state machine Retry


def retry_classes() -> dict[str, type[BaseException]]:
    """The error classes handlers raise for the state machine to retry, by name."""
    from pipeline.errors import StateMachineRetry

    for function in sam_functions(load()).values():
        __import__(function["handler_module"])
    found: dict[str, type[BaseException]] = {}
    pending: list[type[BaseException]] = [StateMachineRetry]
    while pending:
        for sub in pending.pop().__subclasses__():
            found[sub.__name__] = sub
            pending.append(sub)
    return found


def retry_violations(sam: Mapping[str, Any]) -> list[str]:
    """What is wrong with the Retry of the tasks that run item batches (the Map's
    ItemProcessor tasks: the handler raises its retry errors for batches)."""
    problems: list[str] = []
    classes = sorted(retry_classes())
    tasks = list(_batch_tasks(sam))
    if not tasks:
        problems.append("no state machine task runs item batches")
    for where, task in tasks:
        retriers = task.get("Retry", [])
        for name in classes:
            retrier = next((r for r in retriers if name in r.get("ErrorEquals", [])), None)
            if retrier is None:
                problems.append(f"{where}: no Retry names {name}")
                continue
            others = [e for e in retrier["ErrorEquals"] if e != name]
            if any(e.startswith("Lambda.") or e == "States.ALL" for e in others):
                problems.append(f"{where}: {name} shares a retrier with {others}")
            if (retrier.get("MaxAttempts", 3) < 2 or retrier.get("IntervalSeconds", 1) < 1
                    or retrier.get("BackoffRate", 2.0) <= 1):
                problems.append(f"{where}: the Retry of {name} has no backoff ({retrier})")
    return problems


def _batch_tasks(sam: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for logical_id, resource in sam["Resources"].items():
        if resource["Type"] != "AWS::Serverless::StateMachine":
            continue
        for name, state in _states(resource["Properties"]["Definition"]["States"]):
            processor = state.get("ItemProcessor") or state.get("Iterator") or {}
            for inner, task in _states(processor.get("States", {})):
                if task.get("Type") == "Task" and "lambda" in str(task.get("Resource")):
                    yield f"{logical_id}.{name}.{inner}", task


def _states(states: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, state in states.items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from _states(branch.get("States", {}))


# ---------------------------------------------------------------- queue visibility


def visibility_violations(sam: Mapping[str, Any]) -> list[str]:
    """The ingest queue's VisibilityTimeout must be derived from the timeout and window and
    be at least 6 x FunctionTimeout + MaximumBatchingWindowInSeconds for every allowed pair."""
    params = sam["Parameters"]
    timeouts = [str(v) for v in params["FunctionTimeout"].get("AllowedValues", [])]
    windows = [str(v) for v in params["MaximumBatchingWindowInSeconds"].get("AllowedValues", [])]
    if not timeouts or not windows:
        return ["FunctionTimeout and MaximumBatchingWindowInSeconds must list AllowedValues "
                "(the visibility timeout is looked up from them)"]
    queues = [r for r in sam["Resources"].values() if r["Type"] == "AWS::SQS::Queue"
              and "RedrivePolicy" in r.get("Properties", {})]
    problems = []
    for queue in queues:
        visibility = queue["Properties"].get("VisibilityTimeout")
        expected = {"Fn::FindInMap": ["QueueVisibility", {"Ref": "FunctionTimeout"},
                                      {"Ref": "MaximumBatchingWindowInSeconds"}]}
        if visibility != expected:
            problems.append(f"the ingest queue's VisibilityTimeout is {visibility!r}, not "
                            f"derived from FunctionTimeout and the batching window")
            continue
        table = sam.get("Mappings", {}).get("QueueVisibility", {})
        for t in timeouts:
            for w in windows:
                value = table.get(t, {}).get(w)
                if value is None or int(value) < 6 * int(t) + int(w):
                    problems.append(f"QueueVisibility[{t}][{w}] = {value}, below "
                                    f"6 x {t} + {w} = {6 * int(t) + int(w)}")
    if not queues:
        problems.append("no queue with a redrive policy (the ingest queue) in the template")
    return problems


# ---------------------------------------------------------------- IAM


# IAM actions whose names differ from the API operation (the rest are service:Operation).
IAM_ACTION_OF = {
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "HeadBucket"): "s3:ListBucket",
}
# boto3's managed transfers (s3transfer): not API operations, each a GetObject or PutObject.
TRANSFER_METHODS = {
    "download_file": "s3:GetObject", "download_fileobj": "s3:GetObject",
    "upload_file": "s3:PutObject", "upload_fileobj": "s3:PutObject",
}
SCANNED_SERVICES = {"s3": "s3", "dynamodb": "dynamodb", "sqs": "sqs", "stepfunctions": "states",
                    "lambda": "lambda", "sns": "sns", "cloudwatch": "cloudwatch"}


@cache
def _operations() -> dict[str, set[str]]:
    """snake_case method name -> the IAM actions of the operations that carry it."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    methods: dict[str, set[str]] = {}
    for service, prefix in SCANNED_SERVICES.items():
        model = session.get_service_model(service)
        for operation in model.operation_names:
            action = IAM_ACTION_OF.get((service, operation), f"{prefix}:{operation}")
            methods.setdefault(xform_name(operation), set()).add(action)
    for method, action in TRANSFER_METHODS.items():
        methods.setdefault(method, set()).add(action)
    return methods


@dataclass(frozen=True)
class _Module:
    name: str
    path: Path
    tree: ast.Module
    defs: dict[str, ast.AST]  # top-level functions and classes
    imports: dict[str, str]  # local name -> "module" or "module.attribute"


@cache
def _module(name: str, root: Path) -> _Module | None:
    """A project module (pipeline.*, handlers.*) under `root`, parsed; None for anything
    else."""
    if name.split(".")[0] not in ("pipeline", "handlers"):
        return None
    base = root.joinpath(*name.split("."))
    path = next((c for c in (base.with_suffix(".py"), base / "__init__.py") if c.is_file()),
                None)
    if path is None:
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defs: dict[str, ast.AST] = {
        node.name: node for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    imports: dict[str, str] = {}
    for node in ast.walk(tree):  # imports inside functions count too
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return _Module(name, path.relative_to(root), tree, defs, imports)


def _resolve(dotted: str, root: Path) -> tuple[_Module, ast.AST] | None:
    """`pkg.module.name` -> (module, the top-level def named `name`)."""
    module_name, _, attribute = dotted.rpartition(".")
    module = _module(module_name, root) if module_name else None
    if module is None or attribute not in module.defs:
        return None
    return module, module.defs[attribute]


def code_actions(handler: str, root: Path = ROOT) -> dict[str, list[str]]:
    """IAM action -> where the code reachable from `handler` (`module.function`) calls it.

    Reachable: the handler function and its module's top-level statements (run at init),
    then every project function or class they name, transitively (a class counts with
    all its methods, since calls on its instances are not followed by type). A call is an
    AWS call when its method name is an operation of a scanned service (or a transfer
    method); the IAM action comes from the operation's name.
    """
    methods = _operations()
    module_name, _, function = handler.rpartition(".")
    start = _module(module_name, root)
    if start is None or function not in start.defs:
        raise ValueError(f"handler {handler} not found under {root}")
    top_level = [n for n in start.tree.body if not isinstance(
        n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Import | ast.ImportFrom)]
    pending: list[tuple[_Module, ast.AST]] = [(start, start.defs[function])]
    pending.extend((start, node) for node in top_level)
    seen: set[int] = set()
    found: dict[str, list[str]] = {}
    while pending:
        module, reached = pending.pop()
        if id(reached) in seen:
            continue
        seen.add(id(reached))
        for node in ast.walk(reached):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                method = node.func.attr
                if method in ("get_paginator", "get_waiter") and node.args and isinstance(
                        node.args[0], ast.Constant):
                    method = str(node.args[0].value)
                where = f"{module.path}:{node.lineno} .{method}()"
                for action in methods.get(method, ()):
                    found.setdefault(action, []).append(where)
            target: tuple[_Module, ast.AST] | None = None
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                if node.id in module.defs:
                    target = module, module.defs[node.id]
                elif node.id in module.imports:
                    target = _resolve(module.imports[node.id], root)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                    node.value.id in module.imports):  # module.function
                target = _resolve(f"{module.imports[node.value.id]}.{node.attr}", root)
            if target is not None:
                pending.append(target)
    return found


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    from imgpipe.local.provision import load_sam_template

    return load_sam_template(path)


def sam_functions(sam: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Logical id -> {"handler": "module.function", "handler_module": "module"} for every
    function of the SAM template."""
    functions = {}
    for lid, resource in sam["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            handler = str(resource["Properties"]["Handler"])
            functions[lid] = {"handler": handler, "handler_module": handler.rsplit(".", 1)[0]}
    return functions


def role_actions(translated: Mapping[str, Any], role: str) -> set[str]:
    """The actions a role's inline policies allow (both branches of a conditional one)."""
    actions: set[str] = set()
    for policy in translated["Resources"][role]["Properties"].get("Policies", []):
        branches = policy["Fn::If"][1:] if "Fn::If" in policy else [policy]
        for branch in branches:
            if not isinstance(branch, Mapping) or "PolicyDocument" not in branch:
                continue
            for statement in branch["PolicyDocument"]["Statement"]:
                if statement.get("Effect") == "Allow":
                    action = statement["Action"]
                    actions.update(action if isinstance(action, list) else [action])
    return actions


# What AWS evaluates with the caller's role beside a call's own action, from the
# documentation of each call. REQUIRED_WITH: a role making the call must have it;
# ALLOWED_WITH: a role making the call may have it (granted for some settings only).
REQUIRED_WITH: dict[str, dict[str, str]] = {
    "s3:GetObject": {
        # GetObject / HeadObject, "Permissions": with s3:ListBucket on the bucket a missing
        # key is 404 (NoSuchKey), without it 403 (AccessDenied), which is also a denial's.
        "s3:ListBucket": "S3 answers a missing key 404 only with it (else 403)",
    },
}
ALLOWED_WITH: dict[str, dict[str, str]] = {
    # Objects under SSE-KMS (KmsKeyArn): S3 asks KMS with the caller's permissions, to
    # decrypt an object's data key on a read, for a new data key on a write.
    "s3:GetObject": {"kms:Decrypt": "reading an SSE-KMS object"},
    "s3:PutObject": {"kms:GenerateDataKey": "writing under SSE-KMS default encryption",
                     "kms:Decrypt": "a multipart upload under SSE-KMS"},
}


def _with_evaluated(actions: set[str]) -> tuple[dict[str, str], set[str]]:
    """(required action -> why, every allowed action) for a role making `actions`."""
    required = {a: "" for a in actions}
    allowed = set(actions)
    for action in actions:
        for extra, why in REQUIRED_WITH.get(action, {}).items():
            required.setdefault(extra, f"{why}, for {action}")
        allowed.update(REQUIRED_WITH.get(action, {}))
        allowed.update(ALLOWED_WITH.get(action, {}))
    return required, allowed


def iam_violations(sam: Mapping[str, Any], translated: Mapping[str, Any]) -> list[str]:
    """Each function's role allows exactly the actions its code calls, and what AWS
    evaluates for them (`REQUIRED_WITH`, `ALLOWED_WITH`). The managed policies SAM
    attaches (logs, X-Ray, the SQS event source's poller) are not the code's calls and are
    not compared."""
    problems: list[str] = []
    for logical_id, function in sam_functions(sam).items():
        role = f"{logical_id}Role"
        granted = role_actions(translated, role)
        called = code_actions(function["handler"])
        required, allowed = _with_evaluated(set(called))
        for action in sorted(granted - allowed):
            problems.append(f"{role} allows {action}, which {function['handler']} never calls")
        for action in sorted(set(required) - granted):
            why = (f"called at {called[action][0]}" if action in called
                   else f"AWS evaluates it: {required[action]}")
            problems.append(f"{role} lacks {action}, {why}")
    return problems


# What Step Functions calls with the state machine's role for a state, from AWS's "IAM
# policies for using Distributed Map states" (ItemReader, ResultWriter, child executions)
# and the Lambda integration's page. Keyed by (field, Resource).
STATE_CALLS: dict[tuple[str, str], set[str]] = {
    ("ItemReader", "arn:aws:states:::s3:listObjectsV2"): {"s3:ListBucket"},
    ("ItemReader", "arn:aws:states:::s3:getObject"): {"s3:GetObject"},
    ("ResultWriter", "arn:aws:states:::s3:putObject"): {
        "s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts",
        "s3:AbortMultipartUpload"},
    ("Task", "arn:aws:states:::lambda:invoke"): {"lambda:InvokeFunction"},
    ("Task", "arn:aws:states:::lambda:invoke.waitForTaskToken"): {"lambda:InvokeFunction"},
}
# A Distributed Map starts, watches and stops its child executions itself.
DISTRIBUTED_MAP_CALLS = {"states:StartExecution", "states:DescribeExecution",
                         "states:StopExecution"}


def state_calls(definition: Mapping[str, Any]) -> dict[str, list[str]]:
    """IAM action -> the states for which Step Functions calls it with the role."""
    found: dict[str, list[str]] = {}

    def walk(states: Mapping[str, Any], path: str) -> None:
        for name, state in states.items():
            where = f"{path}{name}"
            uses: set[str] = set()
            if state.get("Type") == "Task":
                resource = str(state.get("Resource", ""))
                key = ("Task", resource)
                if key not in STATE_CALLS:
                    found.setdefault(f"(unknown) {resource}", []).append(where)
                uses |= STATE_CALLS.get(key, set())
            for field in ("ItemReader", "ResultWriter"):
                if field in state:
                    resource = str(state[field].get("Resource", ""))
                    if (field, resource) not in STATE_CALLS:
                        found.setdefault(f"(unknown) {field} {resource}", []).append(where)
                    uses |= STATE_CALLS.get((field, resource), set())
            processor = state.get("ItemProcessor") or state.get("Iterator") or {}
            if processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED":
                uses |= DISTRIBUTED_MAP_CALLS
            for action in uses:
                found.setdefault(action, []).append(where)
            walk(processor.get("States", {}), f"{where}.")
            for branch in state.get("Branches", []):
                walk(branch.get("States", {}), f"{where}.")

    walk(definition.get("States", {}), "")
    return found


def state_machine_violations(sam: Mapping[str, Any],
                             translated: Mapping[str, Any]) -> list[str]:
    """Each state machine's role allows exactly what Step Functions calls with it for the
    definition's states (`STATE_CALLS`), and what AWS evaluates for those (`ALLOWED_WITH`:
    the bucket's KMS key)."""
    problems: list[str] = []
    for logical_id, resource in sam["Resources"].items():
        if resource["Type"] != "AWS::Serverless::StateMachine":
            continue
        role = f"{logical_id}Role"
        needed = state_calls(resource["Properties"]["Definition"])
        problems.extend(f"{logical_id}: no table entry for {what} (at {where[0]}): add what "
                        f"AWS documents it calls to STATE_CALLS"
                        for what, where in needed.items() if what.startswith("(unknown)"))
        needed = {a: w for a, w in needed.items() if not a.startswith("(unknown)")}
        granted = role_actions(translated, role)
        _, allowed = _with_evaluated(set(needed))
        allowed -= {a for a in allowed if a.startswith("s3:") and a not in needed}
        for action in sorted(granted - allowed):
            problems.append(f"{role} allows {action}, which no state of {logical_id} needs")
        for action in sorted(set(needed) - granted):
            problems.append(f"{role} lacks {action}, which Step Functions calls for "
                            f"{needed[action][0]}")
    return problems


# What Lambda's poller calls with the function's role for an SQS event source mapping
# (Lambda's "Using Lambda with Amazon SQS": execution role permissions), and the AWS managed
# policy that grants them.
SQS_POLLER_CALLS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
SQS_POLLER_POLICY = "service-role/AWSLambdaSQSQueueExecutionRole"


def event_source_violations(translated: Mapping[str, Any]) -> list[str]:
    """The role of each function an SQS event source mapping feeds lets Lambda's poller
    read and delete the queue's messages (the managed policy, or the actions inline)."""
    problems: list[str] = []
    resources = translated["Resources"]
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        source = json.dumps(resource["Properties"].get("EventSourceArn"))
        if "Queue" not in source and ":sqs:" not in source:
            continue
        function = resource["Properties"]["FunctionName"].get("Ref", "")
        role = f"{function}Role"
        managed = json.dumps(resources.get(role, {}).get("Properties", {}).get(
            "ManagedPolicyArns", []))
        missing = set() if SQS_POLLER_POLICY in managed else (
            SQS_POLLER_CALLS - role_actions(translated, role))
        problems.extend(f"{role} lacks {action}, which Lambda's poller calls for "
                        f"{logical_id}" for action in sorted(missing))
    return problems


def wildcard_violations(translated: Mapping[str, Any]) -> list[str]:
    problems = []
    for logical_id, resource in translated["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"].get("Policies", []):
            branches = policy["Fn::If"][1:] if "Fn::If" in policy else [policy]
            for branch in branches:
                if not isinstance(branch, Mapping) or "PolicyDocument" not in branch:
                    continue
                for statement in branch["PolicyDocument"]["Statement"]:
                    resources = statement.get("Resource", [])
                    for item in resources if isinstance(resources, list) else [resources]:
                        text = json.dumps(item)
                        if item == "*" or ':::*"' in text or '::*"' in text:
                            problems.append(f"{logical_id} {statement.get('Sid', '')}: "
                                            f"resource {text}")
    return problems


# ---------------------------------------------------------------- command line


def main() -> int:
    from imgpipe.local.provision import translate_template

    skips = checkov_skips()
    report = checkov_report(translate_template(TEMPLATE, {}), skips)
    summary = report["summary"]
    print(f"checkov (translated infra/template.yaml): passed {summary['passed']}, "
          f"failed {summary['failed']}, skipped {summary['skipped']} "
          f"(infra/checkov-skips.txt: {len(skips)} checks)")
    for line in failed_checks(report):
        print(f"  FAILED {line}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
