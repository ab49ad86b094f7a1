"""What moto's CloudFormation creates but ignores, applied through the service APIs after
the stack exists (see `adapt.py`, which sets these properties aside as stack outputs, and
provision's module docstring for the list).

One applier per resource type (`APPLIERS`): each takes the API clients, the logical id,
the properties (intrinsics already resolved by moto) and the physical ids, and makes one
kind of resource whole. `apply_deferred` decides the order and calls them; a type with
no applier is a `ProvisionError` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from imgpipe.local.errors import ProvisionError

__all__ = ["APPLIERS", "APPLY_ORDER", "Target", "apply_deferred"]


@dataclass(frozen=True)
class Target:
    """Where an applier works: the API clients, the stack, and the physical ids."""

    client: Callable[[str], Any]
    stack_name: str
    physical: Mapping[str, str]


Applier = Callable[[Target, str, Mapping[str, Any]], None]


def _queue_policy(target: Target, logical_id: str, props: Mapping[str, Any]) -> None:
    sqs = target.client("sqs")
    for queue_url in props["Queues"]:
        sqs.set_queue_attributes(QueueUrl=queue_url,
                                 Attributes={"Policy": json.dumps(props["PolicyDocument"])})


def _queue(target: Target, logical_id: str, props: Mapping[str, Any]) -> None:
    if "RedriveAllowPolicy" in props:
        target.client("sqs").set_queue_attributes(
            QueueUrl=target.physical[logical_id],
            Attributes={"RedriveAllowPolicy": json.dumps(props["RedriveAllowPolicy"])},
        )


def _bucket_policy(target: Target, logical_id: str, props: Mapping[str, Any]) -> None:
    # moto evaluates bucket policies on object requests but ignores their conditions: the
    # TLS-only Deny (aws:SecureTransport=false) would deny every request, and the emulator
    # speaks plain HTTP on loopback anyway. Conditional Deny statements are therefore left
    # out locally; the rest is applied.
    document = dict(props["PolicyDocument"])
    document["Statement"] = [
        st for st in _as_list(document.get("Statement"))
        if not (st.get("Effect") == "Deny" and st.get("Condition"))
    ]
    if document["Statement"]:
        target.client("s3").put_bucket_policy(Bucket=props["Bucket"],
                                              Policy=json.dumps(document))


def _bucket(target: Target, logical_id: str, props: Mapping[str, Any]) -> None:
    _apply_bucket(target.client("s3"), target.physical[logical_id], props)


def _table(target: Target, logical_id: str, props: Mapping[str, Any]) -> None:
    pitr = props.get("PointInTimeRecoverySpecification", {})
    target.client("dynamodb").update_continuous_backups(
        TableName=target.physical[logical_id],
        PointInTimeRecoverySpecification={
            "PointInTimeRecoveryEnabled": _true(pitr.get("PointInTimeRecoveryEnabled"))
        },
    )


def _subscription(target: Target, logical_id: str, props: Mapping[str, Any]) -> None:
    target.client("sns").subscribe(TopicArn=props["TopicArn"], Protocol=props["Protocol"],
                                   Endpoint=props["Endpoint"])


def _function_url(target: Target, logical_id: str, props: Mapping[str, Any]) -> None:
    # The local front door (imgpipe.local.frontdoor) reads it back for its CORS.
    config = {k: props[k] for k in ("AuthType", "Cors") if k in props}
    target.client("lambda").create_function_url_config(
        FunctionName=props["TargetFunctionArn"], **config)


def _alarm(target: Target, logical_id: str, props: Mapping[str, Any]) -> None:
    alarm = {k: v for k, v in props.items() if k != "AlarmName"}
    for key in ("Threshold",):
        if key in alarm:
            alarm[key] = float(alarm[key])
    for key in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
        if key in alarm:
            alarm[key] = int(alarm[key])
    target.client("cloudwatch").put_metric_alarm(
        AlarmName=props.get("AlarmName", f"{target.stack_name}-{logical_id}"), **alarm)


APPLIERS: dict[str, Applier] = {
    "AWS::SQS::QueuePolicy": _queue_policy,
    "AWS::SQS::Queue": _queue,
    "AWS::S3::BucketPolicy": _bucket_policy,
    "AWS::S3::Bucket": _bucket,
    "AWS::DynamoDB::Table": _table,
    "AWS::SNS::Subscription": _subscription,
    "AWS::Lambda::Url": _function_url,
    "AWS::CloudWatch::Alarm": _alarm,
}
# Queue policies first: on AWS, S3 checks it can send before storing a notification.
# Types not named come after these, in the template's order.
APPLY_ORDER = ("AWS::SQS::QueuePolicy", "AWS::SQS::Queue", "AWS::S3::BucketPolicy")


def apply_deferred(
    client: Callable[[str], Any],
    resources: Mapping[str, Any],
    deferred: Mapping[str, Mapping[str, Any]],
    physical: Mapping[str, str],
    stack_name: str,
) -> None:
    """Apply each deferred resource's properties (`deferred`: logical id -> properties) with
    the applier of its type (`resources`: the translated template's resources)."""
    types = {lid: resources[lid]["Type"] for lid in deferred}
    missing = sorted(f"{lid} ({rtype})" for lid, rtype in types.items()
                     if rtype not in APPLIERS)
    if missing:
        raise ProvisionError(f"no local way to apply {', '.join(missing)}")
    rank = {rtype: i for i, rtype in enumerate(APPLY_ORDER)}
    target = Target(client, stack_name, physical)
    for logical_id in sorted(deferred, key=lambda lid: rank.get(types[lid], len(rank))):
        APPLIERS[types[logical_id]](target, logical_id, deferred[logical_id])


def _apply_bucket(s3: Any, bucket: str, props: Mapping[str, Any]) -> None:
    if "VersioningConfiguration" in props:
        s3.put_bucket_versioning(
            Bucket=bucket,
            VersioningConfiguration={"Status": props["VersioningConfiguration"]["Status"]},
        )
    if "PublicAccessBlockConfiguration" in props:
        block = props["PublicAccessBlockConfiguration"]
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={k: _true(v) for k, v in block.items()},
        )
    if "CorsConfiguration" in props:
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [
            {_CORS_RULE_KEYS.get(k, k): v for k, v in rule.items()}
            for rule in props["CorsConfiguration"]["CorsRules"]]})
    if "LifecycleConfiguration" in props:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={
            "Rules": [_lifecycle_rule_for_api(r)
                      for r in props["LifecycleConfiguration"]["Rules"]]})
    if "NotificationConfiguration" in props:
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration=_notification_for_api(props["NotificationConfiguration"]),
        )


def _lifecycle_rule_for_api(rule: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation's lifecycle Rule -> PutBucketLifecycleConfiguration's, for the
    properties the template uses (a rule without Prefix or Filter covers the bucket)."""
    api: dict[str, Any] = {"ID": rule["Id"], "Status": rule["Status"],
                           "Filter": {"Prefix": rule.get("Prefix", "")}}
    if "NoncurrentVersionExpiration" in rule:
        api["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])}
    if "ExpiredObjectDeleteMarker" in rule:
        api["Expiration"] = {"ExpiredObjectDeleteMarker": _true(
            rule["ExpiredObjectDeleteMarker"])}
    if "AbortIncompleteMultipartUpload" in rule:
        api["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": int(
            rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])}
    return api


# CloudFormation's CorsRule keys that PutBucketCors spells otherwise.
_CORS_RULE_KEYS = {"ExposedHeaders": "ExposeHeaders", "MaxAge": "MaxAgeSeconds"}


def _notification_for_api(cfn_config: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation's NotificationConfiguration -> the PutBucketNotificationConfiguration
    shape (moto only matches lower-case filter rule names)."""
    api: dict[str, Any] = {}
    kinds = (("QueueConfigurations", "Queue", "QueueArn"),
             ("TopicConfigurations", "Topic", "TopicArn"),
             ("LambdaConfigurations", "Function", "LambdaFunctionArn"))
    for section, target, api_target in kinds:
        for item in cfn_config.get(section, []):
            entry: dict[str, Any] = {api_target: item[target], "Events": [item["Event"]]}
            rules = item.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            if rules:
                entry["Filter"] = {"Key": {"FilterRules": [
                    {"Name": r["Name"].lower(), "Value": r["Value"]} for r in rules
                ]}}
            api.setdefault(section, []).append(entry)
    return api


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"
