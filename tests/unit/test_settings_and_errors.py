"""Settings from an injected mapping, and AWS error codes translated in one place."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from pipeline.aws import translate_client_error
from pipeline.errors import (
    AccessDeniedError,
    ConfigError,
    GoneError,
    SupersededError,
    TransientError,
)
from pipeline.settings import Settings


def test_settings_come_from_the_mapping_and_explicit_values_win() -> None:
    env = {"IMGPIPE_TABLE": "t", "IMGPIPE_BATCH_SIZE": "8", "AWS_DEFAULT_REGION": "eu-west-1",
           "IMGPIPE_INPUT_PREFIX": "in/", "IMGPIPE_OUTPUT_PREFIX": "out/"}
    s = Settings.from_env(env, batch_size=4)
    assert (s.table_name, s.batch_size, s.region) == ("t", 4, "eu-west-1")
    assert (s.input_prefix, s.output_prefix) == ("in/", "out/")
    assert Settings.from_env({"AWS_REGION": "ap-south-1",
                              "AWS_DEFAULT_REGION": "eu-west-1"}).region == "ap-south-1"


@pytest.mark.parametrize(("inp", "out"), [
    ("photos/", "photos/predictions/"),  # results inside the input: they would trigger it
    ("photos/raw/", "photos/"),
    ("same/", "same/"),
])
def test_overlapping_prefixes_are_refused_because_results_would_loop(inp: str, out: str) -> None:
    with pytest.raises(ConfigError, match="overlap"):
        Settings(input_prefix=inp, output_prefix=out)


@pytest.mark.parametrize("bad", ["", "incoming", "/incoming/"])
def test_a_prefix_must_end_with_a_slash(bad: str) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        Settings(input_prefix=bad)


def test_a_number_that_is_not_one_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="IMGPIPE_BATCH_SIZE='lots'"):
        Settings.from_env({"IMGPIPE_BATCH_SIZE": "lots"})


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("NoSuchKey", 404, GoneError),
    # A denial, not a deleted object: the roles have s3:ListBucket, so a missing key is 404.
    ("AccessDenied", 403, AccessDeniedError),
    ("403", 403, AccessDeniedError),  # a HEAD's denial: no body, only the status
    ("AccessDeniedException", 400, AccessDeniedError),  # DynamoDB's
    ("PreconditionFailed", 412, SupersededError),
    ("SlowDown", 503, TransientError),
    ("ProvisionedThroughputExceededException", 400, TransientError),
    ("ThrottlingException", 400, TransientError),
    ("InternalError", 500, TransientError),
    ("SomethingNew", 400, TransientError),  # unknown: retry, never a false `rejected`
])
def test_client_errors_map_to_the_core_error_family(code: str, status: int, kind: type) -> None:
    error = translate_client_error(_client_error(code, status), "reading s3://b/k")
    assert type(error) is kind
    assert "s3://b/k" in str(error)


def test_a_denial_is_transient_and_never_gone() -> None:
    error = translate_client_error(_client_error("AccessDenied", 403), "reading s3://b/k")
    assert isinstance(error, TransientError) and not isinstance(error, GoneError)
    assert str(error) == ("reading s3://b/k: access denied (AccessDenied): the role's policy, "
                          "the bucket policy or the object's KMS key refuses it (a missing "
                          "object would answer 404)")


def test_a_kms_denial_names_the_key_and_kms_decrypt() -> None:
    import xml.etree.ElementTree as ET
    from pathlib import Path

    # S3's answer to a GetObject whose object's KMS key the role may not use.
    xml = ET.parse(Path(__file__).resolve().parents[1] / "events"
                   / "s3_error_access_denied_kms.xml").getroot()
    error = ClientError({"Error": {"Code": xml.findtext("Code"),
                                   "Message": xml.findtext("Message")},
                         "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    denied = translate_client_error(error, "reading s3://b/incoming/a.jpg")
    assert isinstance(denied, AccessDeniedError)
    assert str(denied) == (
        "reading s3://b/incoming/a.jpg: access denied (AccessDenied): the bucket encrypts "
        "with arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab "
        "and this function's role may not use kms:Decrypt on it; set the template "
        "parameter KmsKeyArn to that key (and allow the role in the key's policy)")


def test_an_unusable_kms_key_is_a_failure_naming_the_key_state() -> None:
    error = ClientError({"Error": {"Code": "KMS.DisabledException", "Message": (
        "arn:aws:kms:us-east-1:123456789012:key/1234abcd is disabled.")},
        "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetObject")
    denied = translate_client_error(error, "reading s3://b/k")
    assert isinstance(denied, AccessDeniedError)
    assert str(denied) == ("reading s3://b/k: KMS.DisabledException: the bucket's KMS key "
                           "cannot be used: arn:aws:kms:us-east-1:123456789012:key/1234abcd "
                           "is disabled.")


def test_another_named_denial_says_which_action_on_what() -> None:
    error = ClientError({"Error": {"Code": "AccessDeniedException", "Message": (
        "User: arn:aws:sts::1:assumed-role/r/f is not authorized to perform: "
        "dynamodb:PutItem on resource: arn:aws:dynamodb:us-east-1:1:table/t with an "
        "explicit deny in an identity-based policy")}}, "PutItem")
    assert str(translate_client_error(error, "writing s3://b/k to t")) == (
        "writing s3://b/k to t: access denied (AccessDeniedException): this function's role "
        "may not dynamodb:PutItem on arn:aws:dynamodb:us-east-1:1:table/t; grant it, or "
        "lift the policy that denies it")


def test_a_status_without_a_code_is_still_classified() -> None:
    error = ClientError({"Error": {}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject")
    assert isinstance(translate_client_error(error, "x"), GoneError)


def test_connection_errors_are_transient() -> None:
    error = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert isinstance(translate_client_error(error, "reading"), TransientError)


def test_the_timeout_margin_scales_down_for_short_timeouts_unless_set() -> None:
    s = Settings()
    assert s.margin_ms(None) == 10_000 and s.margin_ms(120_000) == 10_000
    assert s.margin_ms(10_000) == 2_500 and s.margin_ms(3_000) == 750
    assert Settings(timeout_margin_ms=4_000).margin_ms(10_000) == 4_000
    assert Settings.from_env({"AWS_LAMBDA_FUNCTION_TIMEOUT": "10"}).function_timeout_s == 10


@pytest.mark.parametrize(("env", "needed"), [
    ({"AWS_LAMBDA_FUNCTION_TIMEOUT": "10", "IMGPIPE_TIMEOUT_MARGIN_MS": "10000"}, 11),
    ({"AWS_LAMBDA_FUNCTION_TIMEOUT": "5", "IMGPIPE_TIMEOUT_MARGIN_MS": "4500"}, 6),
    ({"AWS_LAMBDA_FUNCTION_TIMEOUT": "1"}, 2),
])
def test_a_timeout_without_working_time_is_refused_at_start_up(
        env: dict[str, str], needed: int) -> None:
    with pytest.raises(ConfigError, match=rf"leaves no working time.*FunctionTimeout\) to at "
                       rf"least {needed} s, or lower IMGPIPE_TIMEOUT_MARGIN_MS"):
        Settings.from_env(env)


def test_a_short_timeout_with_the_default_margin_is_accepted() -> None:
    assert Settings.from_env({"AWS_LAMBDA_FUNCTION_TIMEOUT": "10"}).margin_ms(10_000) == 2_500


def test_every_region_option_names_both_variables_and_both_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README exports AWS_DEFAULT_REGION (the aws CLI's variable); --help said only
    AWS_REGION. Both are read, and every command's --help says so."""
    import argparse

    from imgpipe.cli import build_parser
    from imgpipe.commands import settings_from

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    with_region = 0
    for name, command in sub.choices.items():
        for action in command._actions:
            if "--region" in action.option_strings:
                with_region += 1
                assert action.help and "AWS_REGION" in action.help, name
                assert "AWS_DEFAULT_REGION" in action.help, name
    assert with_region >= 3  # backfill, redrive, reconcile at least
    args = argparse.Namespace(endpoint_url=None, region=None)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    assert settings_from(args).region == "eu-north-1"
    monkeypatch.setenv("AWS_REGION", "sa-east-1")
    assert settings_from(args).region == "sa-east-1"
