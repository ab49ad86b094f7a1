"""infra/template.yaml: lints clean, translates offline with the security configuration
RELIABILITY.md asks for, and deploys into moto's server with working wiring."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus

import pytest

from imgpipe.local import distributed_map
from imgpipe.local.distributed_map import EXPRESS_MARKER
from imgpipe.local.planner import make_planner
from imgpipe.local.provision import (
    DEFAULT_TEMPLATE,
    LOCAL_PLANNER,
    LocalResources,
    ProvisionError,
    adapt_for_emulator,
    deployed_state_machine_definition,
    emulator_definition,
    load_sam_template,
    provision,
    resolve_parameters,
    translate_template,
)
from pipeline.errors import ConfigError
from tests.functional.conftest import execute_state_machines

TEMPLATE = DEFAULT_TEMPLATE


@pytest.fixture(scope="module")
def cfn() -> dict[str, Any]:
    return translate_template(TEMPLATE, {})


def resources_of(template: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == rtype}


def only(template: dict[str, Any], rtype: str) -> dict[str, Any]:
    found = resources_of(template, rtype)
    assert len(found) == 1, f"{rtype}: {sorted(found)}"
    return next(iter(found.values()))["Properties"]


def defaults() -> dict[str, str]:
    return resolve_parameters(load_sam_template(TEMPLATE))


# ---------------------------------------------------------------- static checks


def test_parameters_have_documented_defaults() -> None:
    params = load_sam_template(TEMPLATE)["Parameters"]
    expected = {
        "BucketName": "", "ExistingBucketName": "", "InputPrefix": "incoming/",
        "OutputPrefix": "predictions/", "TableName": "imgpipe-predictions",
        "QueueName": "imgpipe-ingest", "StateMachineName": "imgpipe-backfill",
        "BatchSize": 16, "MaximumBatchingWindowInSeconds": 1, "MaximumConcurrency": 5,
        "FunctionTimeout": 120, "FunctionMemorySize": 2048, "BackfillBatchSize": 64,
        "BackfillMaxConcurrency": 10, "BackfillToleratedFailurePercentage": 5,
        "ModelSource": "", "AlarmEmail": "", "LogRetentionDays": 30, "KmsKeyArn": "",
        "NoncurrentVersionExpirationDays": 30, "ApiReservedConcurrency": 5,
    }
    for name, default in expected.items():
        assert params[name]["Default"] == default, name
        assert params[name].get("Description"), f"{name} is not documented"
    assert params["MaximumConcurrency"]["MinValue"] == 2


def test_no_wildcard_resource_in_any_role_policy(cfn: dict[str, Any]) -> None:
    roles = resources_of(cfn, "AWS::IAM::Role")
    assert len(roles) == 5  # four functions, the state machine
    statements = []
    for role in roles.values():
        for policy in role["Properties"].get("Policies", []):
            if "Fn::If" in policy:  # the optional model policy: check both branches
                candidates = [b for b in policy["Fn::If"][1:] if "PolicyDocument" in b]
            else:
                candidates = [policy]
            for p in candidates:
                statements.extend(p["PolicyDocument"]["Statement"])
    assert statements
    for st in statements:
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for resource in resources:
            assert resource != "*", st
            text = json.dumps(resource)
            assert '"*"' not in text and not text.endswith(':::*"'), st


def _policy_statements(cfn: dict[str, Any], role: str) -> list[dict[str, Any]]:
    props = cfn["Resources"][role]["Properties"]
    return [st for p in props["Policies"] if "PolicyDocument" in p
            for st in p["PolicyDocument"]["Statement"]]


BUCKET = {"Fn::If": ["CreateBucket", {"Ref": "Bucket"}, {"Ref": "ExistingBucketName"}]}


def test_ingest_role_is_scoped_to_prefixes_and_table(cfn: dict[str, Any]) -> None:
    by_sid = {st["Sid"]: st for st in _policy_statements(cfn, "IngestFunctionRole")}
    assert by_sid["ReadInput"]["Resource"] == {"Fn::Sub": [
        "arn:${AWS::Partition}:s3:::${BucketName}/${InputPrefix}*", {"BucketName": BUCKET}]}
    assert by_sid["WriteOutput"]["Action"] == ["s3:GetObject", "s3:PutObject",
                                               "s3:DeleteObject"]
    assert by_sid["WriteOutput"]["Resource"] == {"Fn::Sub": [
        "arn:${AWS::Partition}:s3:::${BucketName}/${OutputPrefix}*", {"BucketName": BUCKET}]}
    assert by_sid["Records"]["Resource"] == {"Fn::GetAtt": ["PredictionsTable", "Arn"]}


def test_writes_and_deletes_stay_under_the_output_prefix(cfn: dict[str, Any]) -> None:
    for role in ("IngestFunctionRole", "BackfillFunctionRole", "BackfillStateMachineRole"):
        statements = _policy_statements(cfn, role)
        writes = [st for st in statements
                  if {"s3:PutObject", "s3:DeleteObject"} & set(_as_list(st["Action"]))]
        assert writes, role
        for st in writes:
            text, variables = st["Resource"]["Fn::Sub"]
            assert text.startswith("arn:${AWS::Partition}:s3:::${BucketName}/${OutputPrefix}")
            assert variables == {"BucketName": BUCKET}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_summary_role_reads_only_the_run_reports(cfn: dict[str, Any]) -> None:
    statement, listing = _policy_statements(cfn, "SummaryFunctionRole")
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": {
        "Fn::Sub": "${OutputPrefix}_backfill/*"}}}
    assert statement["Action"] == "s3:GetObject"
    text, variables = statement["Resource"]["Fn::Sub"]
    assert text == "arn:${AWS::Partition}:s3:::${BucketName}/${OutputPrefix}_backfill/*"
    assert variables == {"BucketName": BUCKET}


def test_api_role_reads_and_puts_only_the_input_prefix_and_gets_records(
        cfn: dict[str, Any]) -> None:
    by_sid = {st["Sid"]: st for st in _policy_statements(cfn, "ApiFunctionRole")}
    assert set(by_sid) == {"TellMissingFromDenied", "ReadWriteInput", "ReadRecord"}
    assert by_sid["ReadWriteInput"]["Action"] == ["s3:GetObject", "s3:PutObject"]
    assert by_sid["ReadWriteInput"]["Resource"] == {"Fn::Sub": [
        "arn:${AWS::Partition}:s3:::${BucketName}/${InputPrefix}*", {"BucketName": BUCKET}]}
    assert by_sid["ReadRecord"]["Action"] == "dynamodb:GetItem"


BUCKET_ARN = {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${BucketName}", {"BucketName": BUCKET}]}


def test_roles_can_tell_a_missing_object_from_a_denial(cfn: dict[str, Any]) -> None:
    """With s3:ListBucket S3 answers a missing key 404, without it 403 (GetObject's
    "Permissions"): each role that reads objects may list exactly the prefixes it reads,
    or the whole bucket for the backfill, which may read any prefix."""
    expected = {
        "IngestFunctionRole": {"StringLike": {"s3:prefix": [
            {"Fn::Sub": "${InputPrefix}*"}, {"Fn::Sub": "${OutputPrefix}*"}]}},
        "ApiFunctionRole": {"StringLike": {"s3:prefix": {"Fn::Sub": "${InputPrefix}*"}}},
        "SummaryFunctionRole": {"StringLike": {"s3:prefix": {
            "Fn::Sub": "${OutputPrefix}_backfill/*"}}},
        "BackfillFunctionRole": None,
    }
    for role, condition in expected.items():
        (listing,) = [st for st in _policy_statements(cfn, role)
                      if st["Action"] == "s3:ListBucket"]
        assert listing["Sid"] == "TellMissingFromDenied"
        assert listing["Resource"] == BUCKET_ARN, role
        assert listing.get("Condition") == condition, role


def _conditional_statements(cfn: dict[str, Any], role: str,
                            condition: str) -> list[dict[str, Any]]:
    props = cfn["Resources"][role]["Properties"]
    return [st for p in props["Policies"] if "Fn::If" in p and p["Fn::If"][0] == condition
            for st in p["Fn::If"][1]["PolicyDocument"]["Statement"]]


def test_kms_key_arn_lets_every_role_use_the_key_through_s3_only(cfn: dict[str, Any]) -> None:
    assert cfn["Conditions"]["HasKmsKey"] == {"Fn::Not": [{"Fn::Equals": [
        {"Ref": "KmsKeyArn"}, ""]}]}
    expected = {
        "IngestFunctionRole": ["kms:Decrypt", "kms:GenerateDataKey"],  # reads, writes
        "BackfillFunctionRole": ["kms:Decrypt", "kms:GenerateDataKey"],
        "ApiFunctionRole": ["kms:Decrypt", "kms:GenerateDataKey"],  # reads, uploads
        "SummaryFunctionRole": "kms:Decrypt",  # reads the run reports
        "BackfillStateMachineRole": ["kms:Decrypt", "kms:GenerateDataKey"],  # ResultWriter
    }
    for role, actions in expected.items():
        (statement,) = _conditional_statements(cfn, role, "HasKmsKey")
        assert statement["Action"] == actions, role
        assert statement["Resource"] == {"Ref": "KmsKeyArn"}
        assert statement["Condition"] == {"StringEquals": {"kms:ViaService": {
            "Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}}
    key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    with_key = adapt_for_emulator(cfn, {"ExistingBucketName": "my-photos", "KmsKeyArn": key})
    without = adapt_for_emulator(cfn, {"ExistingBucketName": "my-photos"})
    for role in expected:
        sids = [st["Sid"] for p in with_key["Resources"][role]["Properties"]["Policies"]
                for st in p["PolicyDocument"]["Statement"]]
        assert "UseBucketKey" in sids, role
        assert "UseBucketKey" not in json.dumps(without["Resources"][role]), role
    pattern = load_sam_template(TEMPLATE)["Parameters"]["KmsKeyArn"]["AllowedPattern"]
    import re
    assert re.fullmatch(pattern, key) and re.fullmatch(pattern, "")
    assert not re.fullmatch(pattern, "alias/aws/s3")


def test_the_result_writer_may_do_what_aws_documents_it_does(cfn: dict[str, Any]) -> None:
    by_sid = {st["Sid"]: st for st in _policy_statements(cfn, "BackfillStateMachineRole")}
    assert sorted(by_sid["WriteRunReport"]["Action"]) == [
        "s3:AbortMultipartUpload", "s3:GetObject", "s3:ListMultipartUploadParts",
        "s3:PutObject"]


def test_bucket_lifecycle_bounds_what_versioning_keeps(cfn: dict[str, Any]) -> None:
    rules = {r["Id"]: r for r in
             cfn["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert all(r["Status"] == "Enabled" for r in rules.values())
    assert all("Prefix" not in r and "Filter" not in r for r in rules.values())  # whole bucket
    assert rules["ExpireOldVersions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": {"Ref": "NoncurrentVersionExpirationDays"}}
    assert rules["RemoveLoneDeleteMarkers"]["ExpiredObjectDeleteMarker"] is True
    assert rules["AbortUnfinishedUploads"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 7}
    days = load_sam_template(TEMPLATE)["Parameters"]["NoncurrentVersionExpirationDays"]
    assert days["Default"] == 30 and days["MinValue"] >= 1


def _depends_on(cfn: dict[str, Any], logical_id: str) -> set[str]:
    """Everything `logical_id` waits for: DependsOn, Ref and GetAtt, transitively."""
    seen: set[str] = set()
    pending = [logical_id]
    while pending:
        resource = cfn["Resources"].get(pending.pop())
        if resource is None:
            continue
        depends = resource.get("DependsOn", [])
        found = set([depends] if isinstance(depends, str) else depends)
        text = json.dumps({k: v for k, v in resource.items() if k != "DependsOn"})
        found |= {lid for lid in cfn["Resources"]
                  if f'{{"Ref": "{lid}"}}' in text or f'["{lid}", ' in text
                  or f"${{{lid}}}" in text or f"${{{lid}." in text}
        pending.extend(found - seen)
        seen |= found
    return seen


def test_nothing_invokes_a_function_before_its_log_group_exists(cfn: dict[str, Any]) -> None:
    """Lambda creates /aws/lambda/<name> at a function's first invocation; if that comes
    before the stack's LogGroup (the bucket's s3:TestEvent through the queue), the LogGroup
    fails with "already exists". Whatever invokes a function waits for its log group."""
    groups = {r["Properties"]["LogGroupName"]["Fn::Sub"].split("${")[1].rstrip("}"): lid
              for lid, r in resources_of(cfn, "AWS::Logs::LogGroup").items()}
    invokers: dict[str, str] = {}
    for lid, r in cfn["Resources"].items():
        if r["Type"] in ("AWS::Lambda::EventSourceMapping", "AWS::Lambda::Permission"):
            invokers[lid] = r["Properties"]["FunctionName"]["Ref"]
        if r["Type"] == "AWS::StepFunctions::StateMachine":
            for function in groups:
                if function in json.dumps(r["Properties"]):
                    invokers[f"{lid} ({function})"] = function
    assert {"IngestFunction", "BackfillFunction", "SummaryFunction", "ApiFunction"} == set(
        invokers.values()) == set(groups)
    for invoker, function in invokers.items():
        assert groups[function] in _depends_on(cfn, invoker.split(" ")[0]), invoker
    # The mapping is the one way messages reach ingest, the s3:TestEvent included.
    (esm_id,) = resources_of(cfn, "AWS::Lambda::EventSourceMapping")
    assert cfn["Resources"][esm_id]["DependsOn"] == "IngestLogGroup"
    assert "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole" in cfn[
        "Resources"]["IngestFunctionRole"]["Properties"]["ManagedPolicyArns"]


def test_a_public_api_reserves_its_concurrency(cfn: dict[str, Any]) -> None:
    props = cfn["Resources"]["ApiFunction"]["Properties"]
    assert props["ReservedConcurrentExecutions"] == {"Fn::If": [
        "ApiIsPublic", {"Ref": "ApiReservedConcurrency"}, {"Ref": "AWS::NoValue"}]}
    for name in ("IngestFunction", "BackfillFunction", "SummaryFunction"):
        assert "ReservedConcurrentExecutions" not in cfn["Resources"][name]["Properties"]


def test_api_function_url_is_iam_authenticated_by_default_with_cors(
        cfn: dict[str, Any]) -> None:
    (url,) = resources_of(cfn, "AWS::Lambda::Url").values()
    props = url["Properties"]
    assert props["AuthType"] == {"Ref": "ApiAuthType"}
    assert props["Cors"]["AllowOrigins"] == [{"Ref": "ApiAllowedOrigin"}]
    params = load_sam_template(TEMPLATE)["Parameters"]
    assert params["ApiAuthType"]["Default"] == "AWS_IAM"
    assert params["ApiAuthType"]["AllowedValues"] == ["AWS_IAM", "NONE"]
    # NONE needs both of Lambda's public statements (SAM adds them only for a literal
    # NONE, not for a parameter), and only then.
    permissions = {r["Properties"]["Action"]: r
                   for r in resources_of(cfn, "AWS::Lambda::Permission").values()}
    assert set(permissions) == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}
    for permission in permissions.values():
        assert permission["Condition"] == "ApiIsPublic"
        assert permission["Properties"]["Principal"] == "*"
    assert permissions["lambda:InvokeFunctionUrl"]["Properties"]["FunctionUrlAuthType"] == \
        "NONE"
    assert permissions["lambda:InvokeFunction"]["Properties"]["InvokedViaFunctionUrl"] is True
    assert cfn["Conditions"]["ApiIsPublic"] == {"Fn::Equals": [{"Ref": "ApiAuthType"},
                                                               "NONE"]}
    # The bucket takes the page's form uploads from the same origin.
    rule, = cfn["Resources"]["Bucket"]["Properties"]["CorsConfiguration"]["CorsRules"]
    assert rule["AllowedMethods"] == ["POST"]
    assert rule["AllowedOrigins"] == [{"Ref": "ApiAllowedOrigin"}]


def test_queue_timeouts_and_redrive(cfn: dict[str, Any]) -> None:
    values = defaults()
    queue = cfn["Resources"]["IngestQueue"]["Properties"]
    function = cfn["Resources"]["IngestFunction"]["Properties"]
    assert queue["VisibilityTimeout"] == {"Fn::FindInMap": [
        "QueueVisibility", {"Ref": "FunctionTimeout"}, {"Ref": "MaximumBatchingWindowInSeconds"}]}
    assert function["Timeout"] == {"Ref": "FunctionTimeout"}
    visibility = cfn["Mappings"]["QueueVisibility"][values["FunctionTimeout"]][
        values["MaximumBatchingWindowInSeconds"]]
    assert visibility == 6 * int(values["FunctionTimeout"]) + int(
        values["MaximumBatchingWindowInSeconds"])
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 5
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert queue["SqsManagedSseEnabled"] is True
    dlq = cfn["Resources"]["DeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert dlq["SqsManagedSseEnabled"] is True
    assert "RedriveAllowPolicy" in dlq


def test_queue_policy_is_limited_to_the_bucket_and_account(cfn: dict[str, Any]) -> None:
    s3, events = only(cfn, "AWS::SQS::QueuePolicy")["PolicyDocument"]["Statement"]
    assert s3["Fn::If"][0] == "CreateBucket" and events["Fn::If"][0] == "UseExistingBucket"
    policy = s3["Fn::If"][1]
    assert policy["Principal"] == {"Service": "s3.amazonaws.com"}
    assert policy["Action"] == "sqs:SendMessage"
    assert policy["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::If": [
        "HasBucketName", {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}"},
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::imgpipe-${AWS::AccountId}-${AWS::Region}"}]}
    assert policy["Condition"]["StringEquals"]["aws:SourceAccount"] == {
        "Ref": "AWS::AccountId"}
    rule = events["Fn::If"][1]
    assert rule["Principal"] == {"Service": "events.amazonaws.com"}
    assert rule["Condition"]["ArnEquals"]["aws:SourceArn"] == {
        "Fn::GetAtt": ["ExistingBucketUploads", "Arn"]}


def test_event_source_mapping(cfn: dict[str, Any]) -> None:
    esm = only(cfn, "AWS::Lambda::EventSourceMapping")
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "MaximumConcurrency"}}
    assert esm["BatchSize"] == {"Ref": "BatchSize"}
    assert esm["MaximumBatchingWindowInSeconds"] == {"Ref": "MaximumBatchingWindowInSeconds"}
    for name in ("IngestFunction", "BackfillFunction"):
        props = cfn["Resources"][name]["Properties"]
        assert "ReservedConcurrentExecutions" not in props
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["Runtime"] == "python3.12"
        env = props["Environment"]["Variables"]
        assert {"IMGPIPE_TABLE", "IMGPIPE_INPUT_PREFIX", "IMGPIPE_OUTPUT_PREFIX",
                "IMGPIPE_MODEL"} <= set(env)
        assert env["POWERTOOLS_SERVICE_NAME"] == "imgpipe"


def test_environment_names_match_settings(cfn: dict[str, Any]) -> None:
    from pipeline.settings import ENV_VARS

    env = cfn["Resources"]["IngestFunction"]["Properties"]["Environment"]["Variables"]
    known = set(ENV_VARS.values()) | {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"}
    assert set(env) <= known


def test_notification_filter_cannot_match_the_output(cfn: dict[str, Any]) -> None:
    bucket = cfn["Resources"]["Bucket"]
    (config,) = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Event"] == "s3:ObjectCreated:*"
    rules = config["Filter"]["S3Key"]["Rules"]
    assert rules == [{"Name": "prefix", "Value": {"Ref": "InputPrefix"}}]  # no suffix
    values = defaults()
    assert not values["OutputPrefix"].startswith(values["InputPrefix"])
    assert not values["InputPrefix"].startswith(values["OutputPrefix"])
    # no circular dependency: the queue policy names the bucket by name, the bucket waits
    assert bucket["DependsOn"] == ["IngestQueuePolicy"] or bucket["DependsOn"] == \
        "IngestQueuePolicy"


def test_bucket_and_table_protection(cfn: dict[str, Any]) -> None:
    bucket = cfn["Resources"]["Bucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert all(v is True for v in bucket["PublicAccessBlockConfiguration"].values())
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    (tls,) = only(cfn, "AWS::S3::BucketPolicy")["PolicyDocument"]["Statement"]
    assert tls["Effect"] == "Deny"
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    table = only(cfn, "AWS::DynamoDB::Table")
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"] == {"SSEEnabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    (gsi,) = table["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == "by-label"
    assert gsi["Projection"] == {"ProjectionType": "ALL"}


def test_alarms_notify_an_encrypted_topic(cfn: dict[str, Any]) -> None:
    alarms = {lid: r["Properties"]
              for lid, r in resources_of(cfn, "AWS::CloudWatch::Alarm").items()}
    watched = {(a["Namespace"], a["MetricName"], json.dumps(a["Dimensions"][0]["Value"]))
               for a in alarms.values()}
    assert watched == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible",
         '{"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}'),
        ("AWS/Lambda", "Errors", '{"Ref": "IngestFunction"}'),
        ("AWS/Lambda", "Throttles", '{"Ref": "IngestFunction"}'),
        ("AWS/Lambda", "Errors", '{"Ref": "BackfillFunction"}'),
        ("AWS/Lambda", "Throttles", '{"Ref": "BackfillFunction"}'),
        ("AWS/States", "ExecutionsFailed", '{"Ref": "BackfillStateMachine"}'),
    }
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert alarm["TreatMissingData"] == "notBreaching"
    topic = only(cfn, "AWS::SNS::Topic")
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    key = only(cfn, "AWS::KMS::Key")
    assert key["EnableKeyRotation"] is True
    publish = next(s for s in key["KeyPolicy"]["Statement"]
                   if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"})
    assert sorted(publish["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    subscription = cfn["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}


def test_log_groups_have_the_retention_parameter(cfn: dict[str, Any]) -> None:
    groups = {r["Properties"]["LogGroupName"]["Fn::Sub"]: r["Properties"]["RetentionInDays"]
              for r in resources_of(cfn, "AWS::Logs::LogGroup").values()}
    functions = resources_of(cfn, "AWS::Lambda::Function")
    assert len(functions) >= 3
    assert groups == {f"/aws/lambda/${{{name}}}": {"Ref": "LogRetentionDays"}
                      for name in functions}
    retention = load_sam_template(TEMPLATE)["Parameters"]["LogRetentionDays"]
    assert retention["Default"] == 30 and 3653 in retention["AllowedValues"]


def test_an_existing_bucket_replaces_the_bucket_by_an_eventbridge_rule(
    cfn: dict[str, Any],
) -> None:
    created = adapt_for_emulator(cfn)
    existing = adapt_for_emulator(cfn, {"ExistingBucketName": "my-photos"})
    policy_output = "ImgpipeLocalDeferredBucketPolicy"  # applied through the API locally
    assert "Bucket" in created["Resources"] and policy_output in created["Outputs"]
    assert "ExistingBucketUploads" not in created["Resources"]
    assert "Bucket" not in existing["Resources"] and policy_output not in existing["Outputs"]
    rule = existing["Resources"]["ExistingBucketUploads"]["Properties"]
    assert rule["EventPattern"]["detail"] == {
        "bucket": {"name": [{"Ref": "ExistingBucketName"}]},
        "object": {"key": [{"prefix": {"Ref": "InputPrefix"}}]}}
    assert rule["Targets"] == [{"Id": "ingest-queue",
                                "Arn": {"Fn::GetAtt": ["IngestQueue", "Arn"]}}]
    # The queue accepts the rule's events instead of the bucket's notifications.
    policy = existing["Outputs"]["ImgpipeLocalDeferredIngestQueuePolicy"]["Value"]
    (statement,) = policy["Fn::ToJsonString"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}


def test_model_source_policy_only_when_s3(cfn: dict[str, Any]) -> None:
    for packaged in ("", "efficientnet-lite0", "efficientnet-lite0-int8"):
        adapted = adapt_for_emulator(cfn, {"ModelSource": packaged})
        assert len(adapted["Resources"]["IngestFunctionRole"]["Properties"]["Policies"]) == 1
    with_model = adapt_for_emulator(cfn, {"ModelSource": "s3://models/effnet/"})
    policies = with_model["Resources"]["IngestFunctionRole"]["Properties"]["Policies"]
    assert len(policies) == 2
    (statement,) = policies[1]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "s3:GetObject"
    assert resolve_sub_split(statement["Resource"], "s3://models/effnet/") == \
        "arn:${AWS::Partition}:s3:::models/effnet/*"


def resolve_sub_split(resource: dict[str, Any], model_source: str) -> str:
    """The ReadModel resource for `model_source`, its Select/Split done as CloudFormation
    would."""
    text, variables = resource["Fn::Sub"]
    select = variables["Location"]["Fn::Select"]
    delimiter, source = select[1]["Fn::Split"]
    whole = source["Fn::Sub"].replace("${ModelSource}", model_source)
    location = whole.split(delimiter)[select[0]]
    return str(text).replace("${Location}", location)


def _state_machine_definition(cfn: dict[str, Any]) -> dict[str, Any]:
    props = only(cfn, "AWS::StepFunctions::StateMachine")
    separator, lines = props["DefinitionString"]["Fn::Join"]
    text: str = separator.join(lines)
    for key in props["DefinitionSubstitutions"]:
        text = text.replace("${" + key + "}", "1" if "Batch" in key or "Max" in key
                            or "Percentage" in key else f"x-{key}")
    result: dict[str, Any] = json.loads(text)
    return result


def test_backfill_is_a_distributed_map(cfn: dict[str, Any]) -> None:
    props = only(cfn, "AWS::StepFunctions::StateMachine")
    assert props["StateMachineName"] == {"Ref": "StateMachineName"}
    assert props["StateMachineType"] == "STANDARD"
    definition = _state_machine_definition(cfn)
    (name,) = [n for n, s in definition["States"].items() if s["Type"] == "Map"]
    state = definition["States"][name]
    assert state["ItemReader"]["Resource"] == "arn:aws:states:::s3:listObjectsV2"
    assert set(state["ItemBatcher"]["BatchInput"]) == {"bucket.$", "model.$", "overwrite.$",
                                                       "run_started.$"}
    assert state["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED",
                                                         "ExecutionType": "EXPRESS"}
    assert state["ResultWriter"]["Parameters"]["Prefix"] == "x-ResultPrefix"
    (task,) = state["ItemProcessor"]["States"].values()
    assert task["Resource"] == "arn:aws:states:::lambda:invoke"
    assert task["Parameters"] == {"FunctionName": "x-BackfillFunctionArn", "Payload.$": "$"}
    assert {"Lambda.ServiceException", "Lambda.AWSLambdaException",
            "Lambda.SdkClientException", "Lambda.TooManyRequestsException"} <= {
        error for retrier in task["Retry"] for error in retrier["ErrorEquals"]}
    assert props["DefinitionSubstitutions"]["ResultPrefix"] == {
        "Fn::Sub": "${OutputPrefix}_backfill/"}


def test_emulator_definition_is_accepted_by_motos_interpreter(cfn: dict[str, Any]) -> None:
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    text = emulator_definition(json.dumps(_state_machine_definition(cfn)))
    AmazonStateLanguageParser.parse(text)
    states = json.loads(text)["States"]
    plan, state = states["ClassifyObjects"], states["ClassifyObjectsBatches"]
    # Listing + batching become a Task calling the local planner, which writes the batches
    # to S3 where the ResultWriter would write; the same Map reads them from there.
    assert plan["Type"] == "Task" and plan["Next"] == "ClassifyObjectsBatches"
    assert plan["Parameters"]["FunctionName"] == LOCAL_PLANNER
    assert plan["Parameters"]["Payload"] == {
        "bucket.$": "$.request.bucket", "prefix.$": "$.request.prefix",
        "max_items_per_batch.$": "$.limits.max_items_per_batch",
        "batch_input": {"bucket.$": "$.request.bucket", "model.$": "$.request.model",
                        "overwrite.$": "$.request.overwrite",
                        "run_started.$": "$$.Execution.StartTime"},
        "plan_bucket": "x-ResultBucket", "plan_prefix": "x-ResultPrefix",
        "execution.$": "$$.Execution.Name"}
    assert "ItemBatcher" not in state
    # The ResultWriter and the tolerance stay: the emulator applies them
    # (imgpipe.local.distributed_map).
    assert state["ResultWriter"]["Parameters"] == {"Bucket": "x-ResultBucket",
                                                   "Prefix": "x-ResultPrefix"}
    assert state["ToleratedFailurePercentagePath"] == "$.limits.tolerated_failure_percentage"
    assert EXPRESS_MARKER in state["ItemProcessor"]["Comment"]
    assert state["ItemReader"] == {
        "Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSON"},
        "Parameters": {"Bucket.$": "$.plan.Bucket", "Key.$": "$.plan.Key"}}
    assert state["ItemProcessor"]["ProcessorConfig"]["ExecutionType"] == "STANDARD"
    assert states["Summarize"]["Parameters"]["FunctionName"] == "x-SummaryFunctionArn"


def test_emulator_definition_refuses_what_it_cannot_emulate(cfn: dict[str, Any]) -> None:
    definition = _state_machine_definition(cfn)
    del definition["States"]["ClassifyObjects"]["ResultWriter"]
    with pytest.raises(ProvisionError, match="needs a ResultWriter"):
        emulator_definition(json.dumps(definition))
    definition = _state_machine_definition(cfn)
    definition["States"]["ClassifyObjects"]["ItemReader"]["Resource"] = \
        "arn:aws:states:::s3:getObject"
    with pytest.raises(ProvisionError, match="only an ItemBatcher over an s3:listObjectsV2"):
        emulator_definition(json.dumps(definition))


def test_unknown_parameter_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown template parameter"):
        translate_template(TEMPLATE, {"BucketNmae": "x"})


# ---------------------------------------------------------------- deployed into moto


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def deployed() -> Iterator[tuple[LocalResources, Any]]:
    with _deployed({}) as found:
        yield found


def test_a_public_api_deploys_with_its_permissions() -> None:
    """ApiAuthType=NONE adds Lambda permissions, which moto creates without physical ids."""
    with _deployed({"ApiAuthType": "NONE"}) as (r, client):
        url = client("lambda").get_function_url_config(FunctionName=r.api_function)
        assert url["AuthType"] == "NONE"
        concurrency = client("lambda").get_function_concurrency(FunctionName=r.api_function)
        assert concurrency.get("ReservedConcurrentExecutions") == 5
        assert url["Cors"]["AllowOrigins"] == ["*"]


@contextlib.contextmanager
def _deployed(parameters: dict[str, str]) -> Iterator[tuple[LocalResources, Any]]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    saved = os.environ.get("MOTO_PORT")
    os.environ["MOTO_PORT"] = str(port)  # Step Functions calls back on this port
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        resources = provision(endpoint, parameters=parameters)
        session = boto3.session.Session(region_name="us-east-1", aws_access_key_id="test",
                                        aws_secret_access_key="test")

        def client(service: str) -> Any:
            return session.client(service, endpoint_url=endpoint)

        yield resources, client
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("MOTO_PORT", None)
        else:
            os.environ["MOTO_PORT"] = saved


def test_resources_come_from_the_template(deployed: tuple[LocalResources, Any]) -> None:
    r, _ = deployed
    assert (r.bucket, r.input_prefix, r.output_prefix, r.table) == (
        "imgpipe-local", "incoming/", "predictions/", "imgpipe-predictions")
    assert r.queue_url.endswith("/imgpipe-ingest") and r.dlq_url.endswith("/imgpipe-ingest-dlq")
    assert r.state_machine_arn.endswith(":stateMachine:imgpipe-backfill")
    assert (r.batch_size, r.batching_window_s, r.max_concurrency) == (16, 1, 5)
    assert r.function_response_types == ("ReportBatchItemFailures",)
    assert (r.function_timeout_s, r.visibility_timeout_s, r.max_receive_count) == (120, 721, 5)
    assert r.outputs["AlarmTopicArn"].startswith("arn:aws:sns:")
    assert r.function_environment["IMGPIPE_TABLE"] == "imgpipe-predictions"
    assert r.ingest_function and r.backfill_function


def test_bucket_is_configured(deployed: tuple[LocalResources, Any]) -> None:
    r, client = deployed
    s3 = client("s3")
    config = s3.get_bucket_notification_configuration(Bucket=r.bucket)
    (queue,) = config["QueueConfigurations"]
    assert queue["QueueArn"] == r.queue_arn
    assert queue["Events"] == ["s3:ObjectCreated:*"]
    assert queue["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "incoming/"}]
    assert s3.get_bucket_versioning(Bucket=r.bucket)["Status"] == "Enabled"
    block = s3.get_public_access_block(Bucket=r.bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    rules = s3.get_bucket_encryption(Bucket=r.bucket)["ServerSideEncryptionConfiguration"]
    assert rules["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    lifecycle = {rule["ID"]: rule for rule in
                 s3.get_bucket_lifecycle_configuration(Bucket=r.bucket)["Rules"]}
    assert lifecycle["ExpireOldVersions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert lifecycle["AbortUnfinishedUploads"]["AbortIncompleteMultipartUpload"][
        "DaysAfterInitiation"] == 7


def _drain(sqs: Any, url: str, wait_s: float = 1.0) -> list[dict[str, Any]]:
    bodies = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                   WaitTimeSeconds=0).get("Messages", [])
        for m in msgs:
            bodies.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if not msgs:
            time.sleep(0.1)
    return bodies


def test_upload_to_input_prefix_is_queued_output_is_not(
    deployed: tuple[LocalResources, Any],
) -> None:
    r, client = deployed
    s3, sqs = client("s3"), client("sqs")
    _drain(sqs, r.queue_url, 0.3)  # the s3:TestEvent
    s3.put_object(Bucket=r.bucket, Key="incoming/x.jpg", Body=b"\xff\xd8\xff")
    s3.put_object(Bucket=r.bucket, Key="incoming/UPPER.JPG", Body=b"\xff\xd8\xff")
    s3.put_object(Bucket=r.bucket, Key="predictions/x.json", Body=b"{}")
    keys = [unquote_plus(rec["s3"]["object"]["key"])
            for body in _drain(sqs, r.queue_url, 1.5) for rec in body.get("Records", [])]
    assert sorted(keys) == ["incoming/UPPER.JPG", "incoming/x.jpg"]


def test_queue_redrive_and_policy(deployed: tuple[LocalResources, Any]) -> None:
    r, client = deployed
    attrs = client("sqs").get_queue_attributes(QueueUrl=r.queue_url,
                                               AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive == {"deadLetterTargetArn": r.dlq_arn, "maxReceiveCount": 5}
    assert int(attrs["VisibilityTimeout"]) == 721
    statement = json.loads(attrs["Policy"])["Statement"][0]
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == "arn:aws:s3:::imgpipe-local"
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == "123456789012"
    dlq = client("sqs").get_queue_attributes(QueueUrl=r.dlq_url,
                                             AttributeNames=["All"])["Attributes"]
    assert int(dlq["MessageRetentionPeriod"]) == 1209600


def test_alarms_are_deployed_with_the_topic(deployed: tuple[LocalResources, Any]) -> None:
    r, client = deployed
    alarms = client("cloudwatch").describe_alarms()["MetricAlarms"]
    assert len(alarms) == 6
    assert {tuple(a["AlarmActions"]) for a in alarms} == {(r.outputs["AlarmTopicArn"],)}


def test_table_schema(deployed: tuple[LocalResources, Any]) -> None:
    r, client = deployed
    ddb = client("dynamodb")
    table = ddb.describe_table(TableName=r.table)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "image", "KeyType": "HASH"},
                                  {"AttributeName": "model", "KeyType": "RANGE"}]
    (gsi,) = table["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == "by-label"
    assert gsi["KeySchema"] == [{"AttributeName": "label_key", "KeyType": "HASH"},
                                {"AttributeName": "score", "KeyType": "RANGE"}]
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    assert types == {"image": "S", "model": "S", "label_key": "S", "score": "N"}
    backups = ddb.describe_continuous_backups(TableName=r.table)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"


def test_event_source_mapping_is_disabled_locally(deployed: tuple[LocalResources, Any]) -> None:
    r, client = deployed
    (mapping,) = client("lambda").list_event_source_mappings(
        FunctionName=r.ingest_function)["EventSourceMappings"]
    assert mapping["State"] == "Disabled"  # the local poller plays its part
    assert mapping["EventSourceArn"] == r.queue_arn


def test_state_machine_is_a_distributed_map(deployed: tuple[LocalResources, Any]) -> None:
    r, client = deployed
    described = client("stepfunctions").describe_state_machine(
        stateMachineArn=r.state_machine_arn)
    assert described["name"] == "imgpipe-backfill"
    served = json.loads(described["definition"])
    definition = deployed_state_machine_definition(r)
    state = definition["States"]["ClassifyObjects"]
    assert state["Type"] == "Map"
    assert state["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert state["ItemReader"]["Resource"] == "arn:aws:states:::s3:listObjectsV2"
    assert state["ResultWriter"]["Parameters"] == {"Bucket": "imgpipe-local",
                                                   "Prefix": "predictions/_backfill/"}
    task = state["ItemProcessor"]["States"]["ClassifyBatch"]
    assert task["Parameters"]["FunctionName"].endswith(":function:" + r.backfill_function)
    limits = definition["States"]["ReadRequest"]["Parameters"]["limits"]
    assert limits["max_items_per_batch.$"] == "States.StringToJson('64')"
    assert served["States"]["ClassifyObjects"]["ItemProcessor"]["ProcessorConfig"]["Mode"] \
        == "DISTRIBUTED"


def test_backfill_executes_when_the_emulator_runs_state_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `execute_state_machine`, moto serves Step Functions from another backend than
    the one its CloudFormation writes to; provision registers the emulator copy there and
    the Distributed Map runs: S3 listing, one child per item, Lambda called in-process."""
    import boto3
    from moto.awslambda.models import LambdaBackend
    from moto.server import ThreadedMotoServer

    calls: list[tuple[str, dict[str, Any]]] = []
    planner = make_planner(lambda: session.client("s3", endpoint_url=endpoint))

    def invoke(self: Any, function_name: str, qualifier: Any, body: Any, headers: Any,
               response_headers: Any) -> bytes:
        from pipeline.backfill import summarize

        event = json.loads(body)
        if function_name == LOCAL_PLANNER:  # the stand-in for ItemReader + ItemBatcher
            return json.dumps(planner(event)).encode()
        if function_name.endswith(r.outputs["SummaryFunctionName"]):
            return json.dumps(summarize(event["map_run"], session.client(
                "s3", endpoint_url=endpoint), event["request"])).encode()
        calls.append((function_name, event))
        counts = {"classified": len(event["Items"])}
        return json.dumps({"model": "m@1", "counts": counts}).encode()

    monkeypatch.setattr(LambdaBackend, "invoke", invoke)
    distributed_map.install(monkeypatch.setattr)
    port = _free_port()
    monkeypatch.setenv("MOTO_PORT", str(port))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    session = boto3.session.Session(region_name="us-east-1", aws_access_key_id="test",
                                    aws_secret_access_key="test")

    execute_state_machines(endpoint, True)
    try:
        # The module's server is still up and moto's state is per process: no reset, and
        # names of its own (which also exercises parameter overrides).
        names = {"BucketName": "imgpipe-exec", "QueueName": "imgpipe-exec",
                 "TableName": "imgpipe-exec", "StateMachineName": "imgpipe-exec"}
        r = provision(endpoint, parameters=names, stack_name="imgpipe-exec", reset=False)
        assert not r.state_machine_as_deployed
        assert (r.bucket, r.table) == ("imgpipe-exec", "imgpipe-exec")
        assert r.dlq_url.endswith("/imgpipe-exec-dlq")
        assert r.state_machine_arn.endswith(":stateMachine:imgpipe-exec")
        s3 = session.client("s3", endpoint_url=endpoint)
        sfn = session.client("stepfunctions", endpoint_url=endpoint)
        for key in ("old/a.jpg", "old/b c.jpg", "other/x.jpg"):
            s3.put_object(Bucket=r.bucket, Key=key, Body=b"x")
        arn = sfn.start_execution(stateMachineArn=r.state_machine_arn,
                                  input=json.dumps({"bucket": r.bucket, "prefix": "old/"}))[
            "executionArn"]
        deadline = time.monotonic() + 20
        while (status := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "the backfill did not finish"
            time.sleep(0.2)
        assert status["status"] == "SUCCEEDED", status
        output = json.loads(status["output"])
        assert output["request"] == {"bucket": r.bucket, "prefix": "old/", "model": "",
                                     "overwrite": False}
        assert output["counts"]["classified"] == 2 and output["models"] == ["m@1"]
        # The ResultWriter's files, as AWS writes them, are what the summary read.
        manifests = [o["Key"] for o in s3.list_objects_v2(
            Bucket=r.bucket, Prefix="predictions/_backfill/")["Contents"]
            if o["Key"].endswith("/manifest.json")]
        (manifest_key,) = manifests
        manifest = json.loads(s3.get_object(Bucket=r.bucket, Key=manifest_key)["Body"].read())
        assert [f["Key"].rsplit("/", 1)[1] for f in manifest["ResultFiles"]["SUCCEEDED"]] \
            == ["SUCCEEDED_0.json"]
        assert manifest["ResultFiles"]["FAILED"] == manifest["ResultFiles"]["PENDING"] == []
        assert sorted(item["Key"] for _, event in calls for item in event["Items"]) == [
            "old/a.jpg", "old/b c.jpg"]
        for function, event in calls:
            assert function.endswith(":function:" + r.backfill_function)
            started = event["BatchInput"].pop("run_started")
            assert started.startswith(time.strftime("%Y-", time.gmtime()))
            assert event["BatchInput"] == {"bucket": r.bucket, "model": "", "overwrite": False}
    finally:
        execute_state_machines(endpoint, False)  # moto's configuration is process-wide
        server.stop()
