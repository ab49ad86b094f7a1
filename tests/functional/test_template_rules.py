"""The template's early checks (parameter constraints, Rules, Mappings) refuse bad parameter
values, locally (provision's check, which evaluates the template's own sections) and as
CloudFormation would (the sections read and evaluated here)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from imgpipe.local.provision import (
    check_parameter_rules,
    load_sam_template,
    local_parameters,
    provision,
    resolve_parameters,
)
from pipeline.errors import ConfigError
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
    for parameter in ("FunctionTimeout", "BackfillFunctionTimeout"):
        shortest_s = min(int(v) for v in sam["Parameters"][parameter]["AllowedValues"])
        assert shortest_s * 1000 - margin_ms >= 20_000


# EXPRESS executions stop at 5 minutes (AWS's quota), Retry attempts and delays included.
EXPRESS_LIMIT_S = 300


def _retry_delays_s(retrier: dict[str, Any]) -> float:
    """The longest sum of a retrier's delays (FULL jitter waits at most this)."""
    interval = float(retrier.get("IntervalSeconds", 1))
    rate = float(retrier.get("BackoffRate", 2.0))
    cap = float(retrier.get("MaxDelaySeconds", float("inf")))
    return sum(min(interval * rate ** k, cap) for k in range(int(retrier.get("MaxAttempts", 3))))


def _function_timeouts_s(sam: dict[str, Any], function: str) -> list[int]:
    """Every timeout a deploy can give `function`: its parameter's allowed values."""
    timeout = sam["Resources"][function]["Properties"]["Timeout"]
    if isinstance(timeout, int):
        return [timeout]
    parameter = sam["Parameters"][timeout["Ref"]]
    if "AllowedValues" in parameter:
        return [int(v) for v in parameter["AllowedValues"]]
    return [int(parameter["MaxValue"])]


def test_an_express_child_ends_within_five_minutes_with_every_allowed_value(
        sam: dict[str, Any]) -> None:
    """Worst case of one batch: every retrier used to the end, each invocation running to
    the backfill function's timeout (a Lambda service error can come after the function
    ran), plus the longest delays. Issue 17: it was 5 x 120 s + 75 s with the defaults."""
    definition = sam["Resources"]["BackfillStateMachine"]["Properties"]["Definition"]
    (mapped,) = [s for s in definition["States"].values() if s["Type"] == "Map"]
    assert mapped["ItemProcessor"]["ProcessorConfig"]["ExecutionType"] == "EXPRESS"
    (task,) = mapped["ItemProcessor"]["States"].values()
    errors = [e for retrier in task["Retry"] for e in retrier["ErrorEquals"]]
    assert len(errors) == len(set(errors)), "an error named by two retriers (only the first "\
        "matching one is ever used)"
    invocations = 1 + sum(int(r.get("MaxAttempts", 3)) for r in task["Retry"])
    delays_s = sum(_retry_delays_s(r) for r in task["Retry"])
    for timeout_s in _function_timeouts_s(sam, "BackfillFunction"):
        worst_s = invocations * timeout_s + delays_s
        assert worst_s <= EXPRESS_LIMIT_S, (
            f"BackfillFunctionTimeout={timeout_s}: {invocations} invocations x {timeout_s} s "
            f"+ {delays_s:.0f} s of delays = {worst_s:.0f} s > {EXPRESS_LIMIT_S} s")


def test_the_summary_function_knows_both_prefixes(sam: dict[str, Any]) -> None:
    """Issue 17: with OutputPrefix=incoming/ (allowed when InputPrefix differs), a summary
    function without IMGPIPE_INPUT_PREFIX compared incoming/ with its default input prefix,
    incoming/, and every backfill failed at its last step."""
    chosen = values(sam, InputPrefix="photos/", OutputPrefix="incoming/")
    check_parameter_rules(chosen, sam)
    for name, resource in sam["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        variables = resource["Properties"]["Environment"]["Variables"]
        env = {k: chosen[v["Ref"]] for k, v in variables.items()
               if isinstance(v, dict) and v.get("Ref") in chosen}
        assert "IMGPIPE_OUTPUT_PREFIX" in env, name
        settings = Settings.from_env(env)
        assert (settings.input_prefix, settings.output_prefix) == ("photos/", "incoming/"), name


def test_the_local_check_reads_the_template_not_a_copy(sam: dict[str, Any]) -> None:
    import copy

    equal = values(sam, OutputPrefix="incoming/")
    without_rule = copy.deepcopy(sam)
    del without_rule["Rules"]["PrefixesDoNotOverlap"]
    check_parameter_rules(equal, without_rule)  # nothing else forbids it
    short_map = copy.deepcopy(sam)
    del short_map["Mappings"]["QueueVisibility"]["120"]["1"]
    with pytest.raises(ConfigError, match="no QueueVisibility entry for 120 / 1"):
        check_parameter_rules(values(sam), short_map)
