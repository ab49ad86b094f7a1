"""A plugin for the aws CLI v1 (the one `make demo` installs into .venv): it makes `aws sqs`
honour `AWS_ENDPOINT_URL`, as every other service's commands do.

Why it is needed: aws CLI v1 keeps, for a few services, a table of legacy host names (sqs:
`queue.amazonaws.com` in us-east-1, `<region>.queue.amazonaws.com` elsewhere) and, when
`--endpoint-url` is not on the command line, writes that host into the command's endpoint
before botocore looks at `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_SQS`
(`awscli/customizations/overridesslcommonname.py`, registered last). So with the local
stack's exports, `aws sqs ...` goes to AWS instead of the stack (aws-cli issue 8737, open;
no v1 release honours the variable; AWS CLI v2 has no such table).

This plugin runs before that customization and puts the endpoint that is configured for the
service (botocore's own lookup: `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`, then the
config file; none when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is set) where `--endpoint-url`
would go; with nothing configured it does nothing, so against AWS nothing changes. The aws
CLI loads it from the `[plugins]` section of the config file that `imgpipe local`'s banner
exports as `AWS_CONFIG_FILE` (`awscli.cfg` beside this file). AWS CLI v2 ignores that
section (it loads plugins only with `cli_legacy_plugin_path`), and needs no plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CONFIG_FILE", "awscli_initialize", "use_configured_endpoint"]

CONFIG_FILE = Path(__file__).resolve().parent / "awscli.cfg"
EVENT = "before-building-argument-table-parser"


def awscli_initialize(cli: Any) -> None:
    """The aws CLI v1 calls this with its event emitter when it loads the plugin."""
    cli.register(EVENT, use_configured_endpoint)


def use_configured_endpoint(session: Any, parsed_globals: Any, **_kwargs: Any) -> None:
    if getattr(parsed_globals, "endpoint_url", None) is not None:
        return  # --endpoint-url on the command line wins, as always
    service = getattr(parsed_globals, "command", None)
    if service not in _pinned_services():
        return  # botocore resolves the others' configured endpoints itself
    endpoint = configured_endpoint(session, service)
    if endpoint:
        parsed_globals.endpoint_url = endpoint


def configured_endpoint(session: Any, service: str) -> str | None:
    """The endpoint botocore would take from the environment and the config file for a
    client of `service`, or None."""
    from botocore.configprovider import ConfiguredEndpointProvider
    from botocore.utils import ensure_boolean

    if ensure_boolean(session.get_config_variable("ignore_configured_endpoint_urls")):
        return None
    provider = ConfiguredEndpointProvider(full_config=session.full_config,
                                          scoped_config=session.get_scoped_config(),
                                          client_name=service)
    endpoint = provider.provide()
    return str(endpoint) if endpoint else None


def _pinned_services() -> set[str]:
    try:
        from awscli.customizations.overridesslcommonname import SSL_COMMON_NAMES
    except ImportError:  # a CLI without the table pins nothing
        return set()
    return set(SSL_COMMON_NAMES)
