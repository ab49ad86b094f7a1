"""SAM -> plain CloudFormation, offline (aws-sam-translator, no AWS call), and the
template's parameters: defaults, overrides, and CloudFormation's checks of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

__all__ = ["CREDENTIALS", "DEFAULT_TEMPLATE", "LOCAL_BUCKET", "PLACEHOLDER_CODE_KEY",
           "check_parameter_rules", "load_sam_template", "local_parameters", "local_session",
           "resolve_parameters", "translate_template"]

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "template.yaml"
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
PLACEHOLDER_CODE_KEY = "imgpipe/placeholder-code.zip"


def load_sam_template(template_path: Path | None = None) -> dict[str, Any]:
    """The SAM template as a dict (short-form intrinsics such as !Ref become long form)."""
    from samtranslator.yaml_helper import yaml_parse

    path = Path(template_path or DEFAULT_TEMPLATE)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the template {path}: {e.strerror}") from None
    template: dict[str, Any] = yaml_parse(text)
    return template


def resolve_parameters(
    template: Mapping[str, Any], parameters: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Template defaults overlaid with `parameters`; unknown names are an error."""
    declared = template.get("Parameters", {})
    unknown = sorted(set(parameters or {}) - set(declared))
    if unknown:
        raise ConfigError(
            f"unknown template parameter(s): {', '.join(unknown)} "
            f"(the template declares {', '.join(sorted(declared))})"
        )
    values = {name: str(spec.get("Default", "")) for name, spec in declared.items()}
    values.update({k: str(v) for k, v in (parameters or {}).items()})
    return values


def check_parameter_rules(
    values: Mapping[str, str], template: Mapping[str, Any] | None = None
) -> None:
    """What CloudFormation checks before creating anything (parameter constraints, the
    template's `Rules`, its `Mappings` lookups), evaluated from the template itself
    (`template_checks`); `template` defaults to infra/template.yaml."""
    from imgpipe.local.template_checks import check_parameters

    check_parameters(template if template is not None else load_sam_template(), values)


LOCAL_BUCKET = "imgpipe-local"


def local_parameters(parameters: Mapping[str, str] | None = None) -> dict[str, str]:
    """`parameters` plus the local stack's defaults: the bucket keeps the contract name
    `imgpipe-local` (on AWS an empty BucketName derives one from account and region),
    unless the stack is to use an existing bucket."""
    chosen = dict(parameters or {})
    if not chosen.get("ExistingBucketName"):
        chosen.setdefault("BucketName", LOCAL_BUCKET)
    return chosen


def _managed_policy_loader(partition: str = "aws") -> Callable[[], dict[str, str]]:
    """A managed-policy name -> ARN map that needs no network (the translator would
    otherwise call IAM ListPolicies). The template only names policies by ARN or inline
    statements; these are the ones SAM itself adds."""
    names = {
        "AWSLambdaBasicExecutionRole": "service-role/AWSLambdaBasicExecutionRole",
        "AWSLambdaSQSQueueExecutionRole": "service-role/AWSLambdaSQSQueueExecutionRole",
        "AWSXrayWriteOnlyAccess": "AWSXrayWriteOnlyAccess",
        "AWSXRayDaemonWriteAccess": "AWSXRayDaemonWriteAccess",
    }
    mapping = {name: f"arn:{partition}:iam::aws:policy/{path}" for name, path in names.items()}
    return lambda: dict(mapping)


def translate_template(
    template_path: Path | None,
    parameters: Mapping[str, str] | None = None,
    *,
    region: str = "us-east-1",
    code_uri: str = "s3://imgpipe-artifacts/" + PLACEHOLDER_CODE_KEY,
) -> dict[str, Any]:
    """SAM -> plain CloudFormation, offline.

    Local `CodeUri`s (the template uses `..`, the repository root) are replaced by
    `code_uri`, which is what `sam package` does after uploading the code.
    """
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    sam = load_sam_template(template_path)
    values = resolve_parameters(sam, parameters)
    for resource in sam.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            uri = resource.get("Properties", {}).get("CodeUri")
            if isinstance(uri, str) and not uri.startswith("s3://"):
                resource["Properties"]["CodeUri"] = code_uri
    # A session built from explicit values: only its region is used, never the network.
    session = local_session(region)
    translator = Translator(None, Parser(), boto_session=session)
    try:
        translated: dict[str, Any] = translator.translate(
            sam, parameter_values=dict(values),
            get_managed_policy_map=_managed_policy_loader(session.get_partition_for_region(region)),
        )
    except InvalidDocumentException as e:
        causes = "; ".join(str(c) for c in e.causes)
        raise ConfigError(f"the SAM template does not translate: {causes}") from None
    finally:
        translator.metrics.publish()  # to its dummy publisher: silences a warning
    return translated


def local_session(region: str) -> Any:
    """A boto3 session with the emulator's dummy credentials."""
    import boto3

    return boto3.session.Session(region_name=region, **CREDENTIALS)
