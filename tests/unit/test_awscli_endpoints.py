"""aws CLI v1 pins `aws sqs` to its legacy host (queue.amazonaws.com in us-east-1) unless
`--endpoint-url` is given, whatever AWS_ENDPOINT_URL says; the plugin that the local stack's
exported config file loads puts the configured endpoint there first."""

from __future__ import annotations

import argparse
import configparser

import pytest

from imgpipe.local import awscli_endpoints
from imgpipe.local.awscli_endpoints import CONFIG_FILE, use_configured_endpoint

awscli_override = pytest.importorskip("awscli.customizations.overridesslcommonname")
LOCAL = "http://127.0.0.1:4566"


def _session(monkeypatch: pytest.MonkeyPatch, **env: str) -> object:
    import botocore.session

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS",
                 "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(CONFIG_FILE))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return botocore.session.Session()


def _resolve(session: object, command: str, plugin: bool = True,
             endpoint_url: str | None = None) -> str | None:
    """What the CLI's command ends up with: the plugin's handler, then the CLI's own
    (registered last, so it runs after every plugin)."""
    parsed = argparse.Namespace(command=command, endpoint_url=endpoint_url)
    if plugin:
        use_configured_endpoint(session=session, parsed_globals=parsed)
    awscli_override.update_endpoint_url(session=session, parsed_globals=parsed)
    return parsed.endpoint_url  # type: ignore[no-any-return]


def test_without_the_plugin_aws_sqs_ignores_aws_endpoint_url(
        monkeypatch: pytest.MonkeyPatch) -> None:
    session = _session(monkeypatch, AWS_ENDPOINT_URL=LOCAL)
    assert _resolve(session, "sqs", plugin=False) == "https://queue.amazonaws.com"


def test_the_plugin_gives_aws_sqs_the_configured_endpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _resolve(_session(monkeypatch, AWS_ENDPOINT_URL=LOCAL), "sqs") == LOCAL
    # the service's own variable first, as botocore orders them
    session = _session(monkeypatch, AWS_ENDPOINT_URL=LOCAL,
                       AWS_ENDPOINT_URL_SQS="http://127.0.0.1:9999")
    assert _resolve(session, "sqs") == "http://127.0.0.1:9999"
    # --endpoint-url on the command line still wins
    assert _resolve(session, "sqs", endpoint_url="http://x:1") == "http://x:1"


def test_with_nothing_configured_the_cli_behaves_as_without_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _resolve(_session(monkeypatch), "sqs") == "https://queue.amazonaws.com"
    ignored = _session(monkeypatch, AWS_ENDPOINT_URL=LOCAL,
                       AWS_IGNORE_CONFIGURED_ENDPOINT_URLS="true")
    assert _resolve(ignored, "sqs") == "https://queue.amazonaws.com"
    # services the CLI does not pin are left to botocore (which reads the variable itself)
    assert _resolve(_session(monkeypatch, AWS_ENDPOINT_URL=LOCAL), "dynamodb") is None


def test_the_exported_config_file_loads_the_plugin() -> None:
    config = configparser.ConfigParser()
    config.read(CONFIG_FILE)
    assert list(config["plugins"].values()) == [awscli_endpoints.__name__]
    assert hasattr(awscli_endpoints, "awscli_initialize")
    assert not config.has_section("default")  # region and credentials: the export lines
