"""Every AWS call the functions made on the local stack, checked against their roles.

The emulator does not enforce IAM (moto's access control evaluates no resource for DynamoDB,
so every table-scoped grant is refused, and no condition but a trust policy's), so the
local stack records the calls instead (`imgpipe local --record-calls FILE`,
imgpipe/local/call_recorder) and this module checks them against the role policies the
translated template deployed, as IAM evaluates an identity policy
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
an explicit Deny wins, otherwise a statement must Allow the action on the resource, its
conditions holding. Action and resource patterns take `*` and `?` (actions case-
insensitively); NotAction, NotResource and the string, ARN and Bool condition operators
(with IfExists) are evaluated; a condition key the call does not give makes a condition
false, as in IAM.

Each call becomes the action(s) and resource ARN(s) AWS's service authorization reference
names for it (S3: a read with VersionId needs s3:GetObjectVersion, a listing s3:ListBucket
on the bucket; a presigned POST is a PutObject authorized by its signer).

    violations = check_calls(endpoint_url, Path("calls.jsonl"))
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import boto3

CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@dataclass(frozen=True)
class Need:
    """One permission a call needs."""

    function: str
    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()  # condition keys the request gives

    def __str__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.context if not k.startswith("aws:"))
        return f"{self.function}: {self.action} on {self.resource}{extra}"


# ---------------------------------------------------------------- calls -> permissions


def _s3(op: str, p: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, str]]]:
    bucket = f"arn:aws:s3:::{p.get('Bucket', '*')}"
    obj = f"{bucket}/{p['Key']}" if "Key" in p else None
    versioned = "VersionId" in p
    if op in ("GetObject", "HeadObject"):
        yield ("s3:GetObjectVersion" if versioned else "s3:GetObject"), obj or bucket, {}
    elif op == "DeleteObject":
        yield ("s3:DeleteObjectVersion" if versioned else "s3:DeleteObject"), obj or bucket, {}
    elif op in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        yield "s3:PutObject", obj or bucket, {}
    elif op == "CopyObject":
        yield "s3:PutObject", obj or bucket, {}
        source = p.get("CopySource")
        if isinstance(source, Mapping):
            source = f"{source['Bucket']}/{source['Key']}"
        yield "s3:GetObject", f"arn:aws:s3:::{unquote(str(source)).lstrip('/')}", {}
    elif op in ("ListObjectsV2", "ListObjects", "HeadBucket"):
        yield "s3:ListBucket", bucket, {"s3:prefix": str(p.get("Prefix", ""))}
    elif op == "ListObjectVersions":
        yield "s3:ListBucketVersions", bucket, {"s3:prefix": str(p.get("Prefix", ""))}
    elif op == "ListParts":
        yield "s3:ListMultipartUploadParts", obj or bucket, {}
    elif op == "DeleteObjects":
        yield "s3:DeleteObject", f"{bucket}/*", {}  # the keys are in the body: all of them
    else:
        yield f"s3:{op}", obj or bucket, {}


def needs(call: Mapping[str, Any], account: str) -> list[Need]:
    """The permissions one recorded call needs."""
    fn, op, region = call["function"], call["operation"], call["region"]
    service, p = call["service"], call.get("params", {})
    found: list[tuple[str, str, dict[str, str]]] = []
    if service == "s3":
        found = list(_s3(op, p))
    elif service == "dynamodb":
        tables = p.get("TableNames") or ([p["TableName"]] if "TableName" in p else ["*"])
        for table in tables:
            arn = (table if table.startswith("arn:")
                   else f"arn:aws:dynamodb:{region}:{account}:table/{table}")
            if "IndexName" in p:
                arn += f"/index/{p['IndexName']}"
            found.append((f"dynamodb:{op}", arn, {}))
    elif service == "sqs":
        if "QueueUrl" in p:
            owner, name = urlparse(p["QueueUrl"]).path.strip("/").split("/")[-2:]
        else:
            owner, name = account, p.get("QueueName", "*")
        found.append((f"sqs:{op}", f"arn:aws:sqs:{region}:{owner}:{name}", {}))
    elif service == "states":
        arn = p.get("stateMachineArn") or p.get("executionArn") or p.get("mapRunArn") or "*"
        found.append((f"states:{op}", arn, {}))
    elif service == "lambda":
        name = str(p.get("FunctionName", "*"))
        arn = name if name.startswith("arn:") else \
            f"arn:aws:lambda:{region}:{account}:function:{name}"
        found.append(("lambda:InvokeFunction" if op == "Invoke" else f"lambda:{op}", arn, {}))
    elif service == "kms":
        key = str(p.get("KeyId", "*"))
        arn = key if key.startswith("arn:") else f"arn:aws:kms:{region}:{account}:key/{key}"
        found.append((f"kms:{op}", arn, {}))
    elif (service, op) == ("sts", "GetCallerIdentity"):
        found = []  # needs no permission (AWS STS API reference)
    else:
        found.append((f"{service}:{op}", "*", {}))
    return [Need(fn, action, resource,
                 tuple(sorted({**ctx, "aws:RequestedRegion": region}.items())))
            for action, resource, ctx in found]


# ---------------------------------------------------------------- policy evaluation


def _pattern(text: str, case: bool) -> re.Pattern[str]:
    body = re.escape(text).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(f"^{body}$", 0 if case else re.IGNORECASE)


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _matches(patterns: Any, value: str, case: bool) -> bool:
    return any(_pattern(str(p), case).match(value) for p in _listed(patterns))


_OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda want, got: want == got,
    "StringNotEquals": lambda want, got: want != got,
    "StringEqualsIgnoreCase": lambda want, got: want.lower() == got.lower(),
    "StringLike": lambda want, got: bool(_pattern(want, True).match(got)),
    "StringNotLike": lambda want, got: not _pattern(want, True).match(got),
    "ArnEquals": lambda want, got: bool(_pattern(want, True).match(got)),
    "ArnLike": lambda want, got: bool(_pattern(want, True).match(got)),
    "ArnNotEquals": lambda want, got: not _pattern(want, True).match(got),
    "ArnNotLike": lambda want, got: not _pattern(want, True).match(got),
    "Bool": lambda want, got: want.lower() == got.lower(),
}
_NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike"}


def conditions_hold(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    """IAM's condition block: every operator and every key must hold; a key's values are
    ORed (ANDed for a negated operator). A key the request does not give fails the
    condition unless the operator ends in IfExists. An operator not known here fails it."""
    for operator, keys in condition.items():
        base = operator.removesuffix("IfExists")
        if base not in _OPERATORS:
            return False
        test = _OPERATORS[base]
        for key, wanted in keys.items():
            got = next((v for k, v in context.items() if k.lower() == key.lower()), None)
            if got is None:
                if operator.endswith("IfExists"):
                    continue
                return False
            results = [test(str(w), got) for w in _listed(wanted)]
            if not (all(results) if base in _NEGATED else any(results)):
                return False
    return True


def statement_applies(statement: Mapping[str, Any], need: Need) -> bool:
    if "Action" in statement and not _matches(statement["Action"], need.action, case=False):
        return False
    if "NotAction" in statement and _matches(statement["NotAction"], need.action, case=False):
        return False
    if "Resource" in statement and not _matches(statement["Resource"], need.resource, True):
        return False
    if "NotResource" in statement and _matches(statement["NotResource"], need.resource, True):
        return False
    return conditions_hold(statement.get("Condition", {}), dict(need.context))


def decision(policies: Iterable[Mapping[str, Any]], need: Need) -> str:
    """"allowed", "denied" (an explicit Deny) or "implicitly denied" (no Allow)."""
    allowed = False
    for policy in policies:
        for statement in _listed(policy.get("Statement", [])):
            if statement_applies(statement, need):
                if statement.get("Effect") == "Deny":
                    return "denied"
                allowed = allowed or statement.get("Effect") == "Allow"
    return "allowed" if allowed else "implicitly denied"


# ---------------------------------------------------------------- the deployed roles


def _document(doc: Any) -> dict[str, Any]:
    """A policy document as IAM's API returns it (URL-encoded JSON), or as moto returns one
    its CloudFormation wrote (the Python repr of the dict)."""
    if not isinstance(doc, str):
        return dict(doc)
    text = unquote(doc)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = ast.literal_eval(text)
    return dict(parsed)


@dataclass
class Role:
    arn: str
    policies: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # managed policies not found

    @property
    def account(self) -> str:
        return self.arn.split(":")[4]


def function_role(endpoint_url: str, function: str, region: str = "us-east-1") -> Role:
    """The role the function runs with and its policies (inline and managed), as the
    translated template deployed them into the emulator."""
    def client(name: str) -> Any:
        return boto3.client(name, endpoint_url=endpoint_url, region_name=region,
                            **CREDENTIALS)
    iam = client("iam")
    arn = client("lambda").get_function_configuration(FunctionName=function)["Role"]
    role = Role(arn)
    name = arn.rsplit("/", 1)[-1]
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        role.policies.append(_document(
            iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]))
    for attached in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
        try:
            version = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
            doc = iam.get_policy_version(PolicyArn=attached["PolicyArn"],
                                         VersionId=version["DefaultVersionId"])
            role.policies.append(_document(doc["PolicyVersion"]["Document"]))
        except Exception:  # noqa: BLE001 - an AWS managed policy moto does not hold
            role.unreadable.append(attached["PolicyArn"])
    return role


def read_calls(log: Path) -> list[dict[str, Any]]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


def check_calls(endpoint_url: str, log: Path,
                roles: Mapping[str, Role] | None = None) -> list[str]:
    """One sentence for each permission a recorded call needed that its function's role
    does not grant; empty when every call was allowed."""
    calls = read_calls(log)
    roles = dict(roles or {})
    problems: list[str] = []
    seen: set[Need] = set()
    for call in calls:
        fn = call["function"]
        if fn not in roles:
            roles[fn] = function_role(endpoint_url, fn, call["region"])
        for need in needs(call, roles[fn].account):
            if need in seen:
                continue
            seen.add(need)
            verdict = decision(roles[fn].policies, need)
            if verdict != "allowed":
                problems.append(f"{need} ({call['service']} {call['operation']}): "
                                f"{verdict} by the role {roles[fn].arn}")
    return problems


def permissions_used(log: Path, account: str) -> set[tuple[str, str, str]]:
    """(function, action, resource) of every recorded call."""
    return {(n.function, n.action, n.resource) for call in read_calls(log)
            for n in needs(call, account)}


def summary(problems: Sequence[str]) -> str:
    return "calls the functions' roles do not allow:\n  " + "\n  ".join(problems)
