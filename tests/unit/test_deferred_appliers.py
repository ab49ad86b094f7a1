"""What moto's CloudFormation ignores is applied by a table of appliers, one per resource
type (imgpipe/local/deferred.py): every type the adaptation sets aside has one, the order
puts queue policies first, and a type without one is refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from imgpipe.local import deferred
from imgpipe.local.adapt import API_APPLIED_TYPES, IGNORED_PROPERTIES
from imgpipe.local.errors import ProvisionError


def test_every_type_set_aside_has_an_applier() -> None:
    assert {*API_APPLIED_TYPES, *IGNORED_PROPERTIES} <= set(deferred.APPLIERS)


def test_queue_policies_are_applied_before_the_bucket_and_others_keep_their_order() -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    class Client:
        def __init__(self, service: str) -> None:
            self.service = service

        def __getattr__(self, name: str) -> Any:
            return lambda **kwargs: calls.append((self.service, name, kwargs))

    resources = {"Bucket": {"Type": "AWS::S3::Bucket"}, "Alarm": {"Type": "AWS::CloudWatch::Alarm"},
                 "Policy": {"Type": "AWS::SQS::QueuePolicy"}}
    props = {"Bucket": {"VersioningConfiguration": {"Status": "Enabled"}},
             "Alarm": {"Threshold": "1", "Period": "60"},
             "Policy": {"Queues": ["http://q"], "PolicyDocument": {"Statement": []}}}
    deferred.apply_deferred(Client, resources, props, {"Bucket": "b"}, "stack")
    assert [(s, n) for s, n, _ in calls] == [("sqs", "set_queue_attributes"),
                                             ("s3", "put_bucket_versioning"),
                                             ("cloudwatch", "put_metric_alarm")]
    assert calls[2][2] == {"AlarmName": "stack-Alarm", "Threshold": 1.0, "Period": 60}


def test_a_type_without_an_applier_is_refused_by_name() -> None:
    with pytest.raises(ProvisionError, match=r"no local way to apply Thing \(AWS::Foo::Bar\)"):
        deferred.apply_deferred(lambda s: None, {"Thing": {"Type": "AWS::Foo::Bar"}},
                                {"Thing": {}}, {}, "stack")
