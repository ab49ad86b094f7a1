"""Each resource kind's adaptation for moto's CloudFormation (imgpipe/local/adapt.py) on
its own: what it changes, what it adds as outputs, and that its input is left as it was."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from imgpipe.local.adapt import (
    ADAPTERS,
    API_APPLIED_TYPES,
    IGNORED_PROPERTIES,
    adapt_for_emulator,
    defer_to_api,
    disable_event_source_mapping,
    inline_state_machine_definition,
    set_aside_ignored_properties,
)
from imgpipe.local.errors import ProvisionError


def _unchanged(adapter: Any, logical_id: str, resource: dict[str, Any]) -> Any:
    """Run `adapter` and check it left its input alone (the functions are pure)."""
    before = copy.deepcopy(resource)
    result = adapter(logical_id, resource)
    assert resource == before
    return result


def test_a_type_moto_has_no_model_for_leaves_the_stack_as_an_output() -> None:
    policy = {"Type": "AWS::SQS::QueuePolicy",
              "Properties": {"Queues": [{"Ref": "Queue"}], "PolicyDocument": {"A": 1}}}
    result = _unchanged(defer_to_api, "QueuePolicy", policy)
    assert result.resource is None
    assert result.outputs == {"ImgpipeLocalDeferredQueuePolicy": {"Value": {
        "Fn::ToJsonString": {"Queues": [{"Ref": "Queue"}], "PolicyDocument": {"A": 1}}}}}
    result.outputs["ImgpipeLocalDeferredQueuePolicy"]["Value"]["Fn::ToJsonString"][
        "Queues"].append("x")
    assert policy["Properties"]["Queues"] == [{"Ref": "Queue"}]  # a copy, not shared


def test_ignored_bucket_properties_move_to_an_output_and_the_rest_stays() -> None:
    bucket = {"Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain", "Properties": {
        "BucketName": "b", "VersioningConfiguration": {"Status": "Enabled"},
        "CorsConfiguration": {"CorsRules": []}}}
    result = _unchanged(set_aside_ignored_properties, "Bucket", bucket)
    assert result.resource == {"Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain",
                               "Properties": {"BucketName": "b"}}
    assert result.outputs == {"ImgpipeLocalDeferredBucket": {"Value": {"Fn::ToJsonString": {
        "VersioningConfiguration": {"Status": "Enabled"},
        "CorsConfiguration": {"CorsRules": []}}}}}


def test_a_queue_without_ignored_properties_adds_no_output() -> None:
    queue = {"Type": "AWS::SQS::Queue", "Properties": {"VisibilityTimeout": 30}}
    result = _unchanged(set_aside_ignored_properties, "Queue", queue)
    assert result.resource == queue and result.resource is not queue
    assert result.outputs == {}


def test_the_event_source_mapping_is_created_disabled() -> None:
    mapping = {"Type": "AWS::Lambda::EventSourceMapping",
               "Properties": {"BatchSize": 10, "Enabled": True}}
    result = _unchanged(disable_event_source_mapping, "Mapping", mapping)
    assert result.resource == {"Type": "AWS::Lambda::EventSourceMapping",
                               "Properties": {"BatchSize": 10, "Enabled": False}}
    assert result.outputs == {}


def test_definition_substitutions_are_joined_into_the_definition_and_kept_as_an_output(
) -> None:
    machine = {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
        "DefinitionString": '{"Resource": "${Fn}", "Path": "$$.Map.Item", "Other": "${Kept}"}',
        "DefinitionSubstitutions": {"Fn": {"Fn::GetAtt": ["Worker", "Arn"]}}}}
    result = _unchanged(inline_state_machine_definition, "Backfill", machine)
    joined = {"Fn::Join": ["", ['{"Resource": "', {"Fn::GetAtt": ["Worker", "Arn"]},
                                '", "Path": "$$.Map.Item", "Other": "${Kept}"}']]}
    assert result.resource == {"Type": "AWS::StepFunctions::StateMachine",
                               "Properties": {"DefinitionString": joined}}
    assert result.outputs == {"ImgpipeLocalDefinitionBackfill": {"Value": joined}}


def test_a_definition_that_is_not_inline_text_is_refused_in_a_sentence() -> None:
    machine = {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
        "DefinitionString": {"Fn::Sub": "x"}, "DefinitionSubstitutions": {"A": "b"}}}
    with pytest.raises(ProvisionError, match="must be inline text"):
        inline_state_machine_definition("Backfill", machine)


def test_the_table_names_an_adaptation_for_every_kind_that_needs_one() -> None:
    assert {t: ADAPTERS[t] for t in API_APPLIED_TYPES} == dict.fromkeys(
        API_APPLIED_TYPES, defer_to_api)
    assert {t: ADAPTERS[t] for t in IGNORED_PROPERTIES} == dict.fromkeys(
        IGNORED_PROPERTIES, set_aside_ignored_properties)
    assert ADAPTERS["AWS::Lambda::EventSourceMapping"] is disable_event_source_mapping
    assert ADAPTERS["AWS::StepFunctions::StateMachine"] is inline_state_machine_definition


def test_the_driver_drops_what_refers_to_a_removed_resource() -> None:
    template = {"Resources": {
        "Fn": {"Type": "AWS::Lambda::Function"},
        "Url": {"Type": "AWS::Lambda::Url", "Properties": {"TargetFunctionArn": {"Ref": "Fn"}}},
        "Other": {"Type": "AWS::SQS::Queue", "DependsOn": ["Url", "Fn"]},
        "Only": {"Type": "AWS::SQS::Queue", "DependsOn": "Url"},
    }, "Outputs": {"UrlOut": {"Value": {"Fn::GetAtt": ["Url", "FunctionUrl"]}},
                   "FnOut": {"Value": {"Ref": "Fn"}}}}
    before = copy.deepcopy(template)
    adapted = adapt_for_emulator(template)
    assert template == before
    assert list(adapted["Resources"]) == ["Fn", "Other", "Only"]
    assert adapted["Resources"]["Fn"] == {"Type": "AWS::Lambda::Function", "Properties": {}}
    assert adapted["Resources"]["Other"]["DependsOn"] == ["Fn"]
    assert "DependsOn" not in adapted["Resources"]["Only"]
    assert list(adapted["Outputs"]) == ["FnOut", "ImgpipeLocalDeferredUrl"]
