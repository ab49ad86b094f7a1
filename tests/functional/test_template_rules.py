"""The template's early checks (parameter constraints, Rules, Mappings) refuse bad parameter
values, locally (provision's check, which evaluates the template's own sections) and as
CloudFormation would (the sections read and evaluated here)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.local.provision import (
    check_parameter_rules,
    load_sam_template,
    local_parameters,
    provision,
    resolve_parameters,
)
from pipeline.settings import Settings


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return load_sam_template()


def values(sam: dict[str, Any], **changes: str) -> dict[str, str]:
    return resolve_parameters(sam, changes)


def test_the_defaults_pass(sam: dict[str, Any]) -> None:
    check_parameter_rules(values(sam), sam)
    check_parameter_rules(values(sam, **local_parameters()), sam)
    check_parameter_rules(values(sam, ExistingBucketName="my-photos"), sam)


@pytest.mark.parametrize(("changes", "message"), [
    # prefixes that overlap: equal (the Rule), or nested (one top-level folder only)
    ({"OutputPrefix": "incoming/"}, "PrefixesDoNotOverlap failed: InputPrefix and "
                                    "OutputPrefix must differ"),
    ({"OutputPrefix": "incoming/results/"}, "OutputPrefix='incoming/results/' does not match"),
    ({"InputPrefix": "predictions/new/"}, "InputPrefix='predictions/new/' does not match"),
    ({"InputPrefix": "/incoming/"}, "does not match"),
    # a batch above 10 without a batching window
    ({"BatchSize": "11", "MaximumBatchingWindowInSeconds": "0"},
     "LargeBatchesNeedABatchingWindow failed: A BatchSize above 10 needs "
     "MaximumBatchingWindowInSeconds of at least 1"),
    # timeouts and windows the visibility mapping has no entry for
    ({"FunctionTimeout": "10"}, "FunctionTimeout='10' is not one of 30, 60"),
    ({"FunctionTimeout": "125"}, "FunctionTimeout='125' is not one of"),
    ({"MaximumBatchingWindowInSeconds": "7"}, "MaximumBatchingWindowInSeconds='7' is not"),
    # both a new and an existing bucket
    ({"BucketName": "mine", "ExistingBucketName": "theirs"},
     "OneBucket failed: Set BucketName"),
    ({"ExistingBucketName": "Not_A_Bucket"}, "ExistingBucketName='Not_A_Bucket' does not"),
    # a model source that is not one folder of one bucket
    ({"ModelSource": "s3://models"}, "ModelSource='s3://models' does not match"),
    ({"ModelSource": "s3://*"}, "does not match"),
    ({"ModelSource": "s3://models/*"}, "does not match"),
    ({"ModelSource": "s3://models/lite0"}, "does not match"),  # no trailing '/'
    ({"ModelSource": "s3://models/lite0/*/"}, "does not match"),
    ({"ModelSource": "resnet50"}, "does not match"),  # not a packaged model's name
    ({"LogRetentionDays": "31"}, "LogRetentionDays='31' is not one of"),
    ({"AlarmEmail": "not an address"}, "AlarmEmail='not an address' does not match"),
    ({"BatchSize": "0"}, "BatchSize='0' is below the minimum 1"),
])
def test_bad_values_are_refused_locally(
    sam: dict[str, Any], changes: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_parameter_rules(values(sam, **changes), sam)


@pytest.mark.parametrize("good", [
    {"BatchSize": "10", "MaximumBatchingWindowInSeconds": "0"},
    {"BatchSize": "100", "MaximumBatchingWindowInSeconds": "1"},
    {"ModelSource": "s3://models/lite0/"},
    {"ModelSource": "s3://my.models-1/team/lite0/v2/"},
    {"ModelSource": "efficientnet-lite0-int8"},
    {"InputPrefix": "uploads/", "OutputPrefix": "uploads-results/"},
    {"AlarmEmail": "ops@example.com", "LogRetentionDays": "365"},
])
def test_good_values_pass(sam: dict[str, Any], good: dict[str, str]) -> None:
    check_parameter_rules(values(sam, **good), sam)


def test_provision_refuses_before_touching_the_emulator() -> None:
    # Nothing listens on port 9: the check must fail first, with the template's sentence.
    with pytest.raises(ConfigError, match="LargeBatchesNeedABatchingWindow"):
        provision("http://127.0.0.1:9", parameters={"BatchSize": "50",
                                                    "MaximumBatchingWindowInSeconds": "0"})


# ---------------------------------------------------------------- the sections themselves


def test_the_rules_say_what_cloudformation_will_check(sam: dict[str, Any]) -> None:
    rules = sam["Rules"]
    assert rules["PrefixesDoNotOverlap"]["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "InputPrefix"}, {"Ref": "OutputPrefix"}]}]}
    large = rules["LargeBatchesNeedABatchingWindow"]
    assert large["RuleCondition"] == {
        "Fn::Equals": [{"Ref": "MaximumBatchingWindowInSeconds"}, "0"]}
    listed, ref = large["Assertions"][0]["Assert"]["Fn::Contains"]
    assert ref == {"Ref": "BatchSize"} and listed == [str(n) for n in range(1, 11)]
    for rule in rules.values():
        for assertion in rule["Assertions"]:
            assert assertion["AssertDescription"], "a failed rule must say why"


def test_one_top_level_folder_makes_overlap_equality(sam: dict[str, Any]) -> None:
    """The reason the Rule can be an equality: with one folder each, two prefixes overlap
    (one starts with the other) exactly when they are equal."""
    pattern = sam["Parameters"]["InputPrefix"]["AllowedPattern"]
    assert pattern == sam["Parameters"]["OutputPrefix"]["AllowedPattern"]
    names = ["a/", "ab/", "a.b/", "in/", "in-x/", "incoming/", "inc/"]
    for a in names:
        for b in names:
            assert re.fullmatch(pattern, a) and re.fullmatch(pattern, b)
            assert (a.startswith(b) or b.startswith(a)) == (a == b)


def test_the_visibility_mapping_is_six_timeouts_plus_the_window(sam: dict[str, Any]) -> None:
    table = sam["Mappings"]["QueueVisibility"]
    timeouts = [str(v) for v in sam["Parameters"]["FunctionTimeout"]["AllowedValues"]]
    windows = [str(v) for v in
               sam["Parameters"]["MaximumBatchingWindowInSeconds"]["AllowedValues"]]
    assert sorted(table, key=int) == timeouts
    for t in timeouts:
        assert sorted(table[t], key=int) == windows
        for w in windows:
            assert table[t][w] == 6 * int(t) + int(w)
            assert table[t][w] <= 43200  # SQS's maximum


def test_the_shortest_timeout_leaves_working_time_after_the_margin(sam: dict[str, Any]) -> None:
    # IMGPIPE_TIMEOUT_MARGIN_MS unset: 10 s (or less, for short timeouts)
    margin_ms = Settings().timeout_margin_ms or 10_000
    for name in ("IngestFunction", "BackfillFunction"):
        env = sam["Resources"][name]["Properties"]["Environment"]["Variables"]
        assert "IMGPIPE_TIMEOUT_MARGIN_MS" not in env  # so the default applies on AWS
    shortest_s = min(int(v) for v in sam["Parameters"]["FunctionTimeout"]["AllowedValues"])
    assert shortest_s * 1000 - margin_ms >= 20_000


def test_the_local_check_reads_the_template_not_a_copy(sam: dict[str, Any]) -> None:
    import copy

    equal = values(sam, OutputPrefix="incoming/")
    without_rule = copy.deepcopy(sam)
    del without_rule["Rules"]["PrefixesDoNotOverlap"]
    check_parameter_rules(equal, without_rule)  # nothing else forbids it
    short_map = copy.deepcopy(sam)
    del short_map["Mappings"]["QueueVisibility"]["120"]["5"]
    with pytest.raises(ConfigError, match="no QueueVisibility entry for 120 / 5"):
        check_parameter_rules(values(sam), short_map)
