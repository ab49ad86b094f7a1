"""The check behind the local stack's IAM enforcement (tests/iam_calls.py): which permission
each recorded call needs, and IAM's evaluation of a role's policies for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.iam_calls import Need, Role, check_calls, conditions_hold, decision, needs

EVENTS = Path(__file__).resolve().parents[1] / "events"
CASES = json.loads((EVENTS / "iam_required_permissions.json").read_text())["cases"]
ACCOUNT = "123456789012"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['call']['service']}-"
                                                      f"{c['call']['operation']}")
def test_each_call_needs_what_aws_documents(case: dict[str, Any]) -> None:
    call = {"function": "fn", "region": "us-east-1", **case["call"]}
    assert [[n.action, n.resource] for n in needs(call, ACCOUNT)] == case["needs"]


# The ingest role as the template writes it (resolved for the local stack's names).
INGEST = {"Statement": [
    {"Sid": "ReadInput", "Effect": "Allow", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::imgpipe-local/incoming/*"},
    {"Sid": "WriteOutput", "Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
     "Resource": "arn:aws:s3:::imgpipe-local/predictions/*"},
    {"Sid": "Records", "Effect": "Allow", "Action": ["dynamodb:BatchGetItem", "dynamodb:PutItem"],
     "Resource": "arn:aws:dynamodb:us-east-1:123456789012:table/imgpipe-predictions"},
]}


def need(action: str, resource: str, **context: str) -> Need:
    return Need("fn", action, resource, tuple(sorted(context.items())))


@pytest.mark.parametrize(("action", "resource", "verdict"), [
    ("s3:GetObject", "arn:aws:s3:::imgpipe-local/incoming/a b.jpg", "allowed"),
    ("S3:getobject", "arn:aws:s3:::imgpipe-local/incoming/a.jpg", "allowed"),  # actions: any case
    ("s3:GetObject", "arn:aws:s3:::imgpipe-local/Incoming/a.jpg", "implicitly denied"),
    ("s3:GetObject", "arn:aws:s3:::imgpipe-local/archive/a.jpg", "implicitly denied"),
    ("s3:PutObject", "arn:aws:s3:::imgpipe-local/incoming/a.jpg", "implicitly denied"),
    ("s3:GetObjectVersion", "arn:aws:s3:::imgpipe-local/incoming/a.jpg", "implicitly denied"),
    ("s3:ListBucket", "arn:aws:s3:::imgpipe-local", "implicitly denied"),
    ("dynamodb:PutItem", "arn:aws:dynamodb:us-east-1:123456789012:table/imgpipe-predictions",
     "allowed"),
    ("dynamodb:PutItem", "arn:aws:dynamodb:us-east-1:123456789012:table/imgpipe-predictions2",
     "implicitly denied"),
    ("dynamodb:GetItem", "arn:aws:dynamodb:us-east-1:123456789012:table/imgpipe-predictions",
     "implicitly denied"),
])
def test_the_ingest_role_allows_exactly_its_statements(action: str, resource: str,
                                                       verdict: str) -> None:
    assert decision([INGEST], need(action, resource)) == verdict


def test_an_explicit_deny_wins_over_any_allow() -> None:
    deny = {"Statement": {"Effect": "Deny", "Action": "s3:*",
                          "NotResource": "arn:aws:s3:::imgpipe-local/predictions/*"}}
    assert decision([INGEST, deny], need("s3:GetObject",
                                         "arn:aws:s3:::imgpipe-local/incoming/a.jpg")) == "denied"
    assert decision([INGEST, deny], need("s3:PutObject",
                                         "arn:aws:s3:::imgpipe-local/predictions/a")) == "allowed"


def test_not_action_and_question_mark() -> None:
    policy = {"Statement": [{"Effect": "Allow", "NotAction": "s3:Delete*",
                             "Resource": "arn:aws:s3:::b/photo-?.jpg"}]}
    assert decision([policy], need("s3:GetObject", "arn:aws:s3:::b/photo-1.jpg")) == "allowed"
    assert decision([policy], need("s3:GetObject", "arn:aws:s3:::b/photo-12.jpg")) != "allowed"
    assert decision([policy], need("s3:DeleteObject", "arn:aws:s3:::b/photo-1.jpg")) != "allowed"


def test_conditions_as_iam_evaluates_them() -> None:
    listing = {"Statement": [{"Effect": "Allow", "Action": "s3:ListBucket",
                              "Resource": "arn:aws:s3:::b",
                              "Condition": {"StringLike": {"s3:prefix": ["archive/*", ""]}}}]}
    assert decision([listing], need("s3:ListBucket", "arn:aws:s3:::b",
                                    **{"s3:prefix": "archive/2019/"})) == "allowed"
    assert decision([listing], need("s3:ListBucket", "arn:aws:s3:::b",
                                    **{"s3:prefix": "private/"})) != "allowed"
    # a key the request does not give fails the condition, unless ...IfExists
    assert not conditions_hold({"StringEquals": {"kms:ViaService": "s3.x"}}, {})
    assert conditions_hold({"StringEqualsIfExists": {"kms:ViaService": "s3.x"}}, {})
    # negated operators must hold for every listed value; unknown operators never hold
    assert not conditions_hold({"StringNotEquals": {"k": ["a", "b"]}}, {"k": "b"})
    assert conditions_hold({"StringNotEquals": {"k": ["a", "b"]}}, {"k": "c"})
    assert not conditions_hold({"NumericLessThan": {"k": "3"}}, {"k": "1"})
    assert conditions_hold({"ArnLike": {"aws:SourceArn": "arn:aws:s3:::b*"}},
                           {"aws:SourceArn": "arn:aws:s3:::bucket"})


def test_check_calls_names_each_call_the_role_does_not_allow(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    calls = [
        {"function": "ingest", "region": "us-east-1", "service": "s3",
         "operation": "GetObject", "params": {"Bucket": "imgpipe-local",
                                              "Key": "incoming/a.jpg"}},
        {"function": "ingest", "region": "us-east-1", "service": "s3",
         "operation": "GetObject", "params": {"Bucket": "imgpipe-local", "Key": "incoming/a.jpg",
                                              "VersionId": "v1"}},
        {"function": "ingest", "region": "us-east-1", "service": "dynamodb",
         "operation": "PutItem", "params": {"TableName": "imgpipe-predictions"}},
    ]
    log.write_text("".join(json.dumps(c) + "\n" for c in calls + calls[:1]))
    role = Role("arn:aws:iam::123456789012:role/ingest", [INGEST])
    problems = check_calls("http://unused", log, roles={"ingest": role})
    assert problems == [
        "ingest: s3:GetObjectVersion on arn:aws:s3:::imgpipe-local/incoming/a.jpg "
        "(s3 GetObject): implicitly denied by the role arn:aws:iam::123456789012:role/ingest"]
