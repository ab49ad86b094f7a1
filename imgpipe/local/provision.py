"""Deploy infra/template.yaml into moto's server: one template, two targets, no drift.

    resources = provision("http://127.0.0.1:4566")
    resources.bucket, resources.queue_url, resources.state_machine_arn, ...

The SAM template is translated offline (aws-sam-translator, no AWS call), adapted where the
emulator cannot take it (each adaptation is listed in `adapt_for_emulator` and explained
where it happens), created as a CloudFormation stack in moto over HTTP, and then completed
through the service APIs for what moto's CloudFormation creates but ignores. Every name and
setting comes from the translated template and the deployed resources; this module has no
second copy of them.

What moto's CloudFormation ignores (checked against moto 5.2.5) and is applied here:
- resource types it has no model for: AWS::S3::BucketPolicy, AWS::SQS::QueuePolicy,
  AWS::CloudWatch::Alarm, AWS::SNS::Subscription (skipped with a warning by moto); of the
  bucket policy only the statements moto can evaluate faithfully (it ignores conditions,
  so the TLS-only conditional Deny would deny everything and is left out locally);
- AWS::S3::Bucket: only BucketName, BucketEncryption and Tags are honoured; versioning,
  the public access block and the notification configuration are applied here;
- AWS::DynamoDB::Table: PointInTimeRecoverySpecification (applied here);
- AWS::SQS::Queue: RedriveAllowPolicy is taken as given (a dict) and re-applied as JSON;
- AWS::StepFunctions::StateMachine: DefinitionSubstitutions (resolved in the template, see
  `_inline_definition_substitutions`).
Not applied (no local effect): the functions' TracingConfig and the SAM tags.

Other adaptations (see `adapt_for_emulator`): the Lambda code is a placeholder zip in a
staging bucket (the functions never run in moto); the SQS event source mapping
is created disabled (moto's own trigger would eat the messages; the local poller reads the
mapping's settings back from `LocalResources`); `Fn::If ... AWS::NoValue` list items are
decided from the parameters. When the emulator executes state machines, the API is served
by another moto backend than CloudFormation's, so the machine is registered there too, in
the dialect moto's interpreter accepts (`emulator_definition`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import re
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgpipe.local.deferred import apply_deferred
from imgpipe.local.errors import ProvisionError
from imgpipe.local.state_machine import LOCAL_PLANNER, emulator_definition
from pipeline.errors import ConfigError

__all__ = [
    "DEFAULT_TEMPLATE",
    "DeployedFunction",
    "LOCAL_PLANNER",
    "LocalResources",
    "ProvisionError",
    "adapt_for_emulator",
    "check_parameter_rules",
    "deployed_state_machine_definition",
    "emulator_definition",
    "load_sam_template",
    "LOCAL_BUCKET",
    "local_parameters",
    "local_session",
    "moto_api",
    "provision",
    "resolve_parameters",
    "translate_template",
]

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "template.yaml"
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
PLACEHOLDER_CODE_KEY = "imgpipe/placeholder-code.zip"

# Resource types moto's CloudFormation has no model for; provision applies them through
# the API after the stack exists (their properties are resolved by moto, see
# `_deferred_output`).
API_APPLIED_TYPES = ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy", "AWS::CloudWatch::Alarm",
                     "AWS::SNS::Subscription", "AWS::Lambda::Url")
# Properties of supported resources that moto's CloudFormation accepts but ignores.
IGNORED_PROPERTIES = {
    "AWS::S3::Bucket": (
        "VersioningConfiguration",
        "PublicAccessBlockConfiguration",
        "NotificationConfiguration",
        "CorsConfiguration",
        "LifecycleConfiguration",
    ),
    "AWS::DynamoDB::Table": ("PointInTimeRecoverySpecification",),
    "AWS::SQS::Queue": ("RedriveAllowPolicy",),
}
DEFERRED_OUTPUT_PREFIX = "ImgpipeLocalDeferred"
DEFINITION_OUTPUT_PREFIX = "ImgpipeLocalDefinition"
_LOCAL_OUTPUT_PREFIXES = (DEFERRED_OUTPUT_PREFIX, DEFINITION_OUTPUT_PREFIX)


@dataclass(frozen=True)
class DeployedFunction:
    """A function of the stack as deployed: what the local runtime needs to run it."""

    name: str
    handler: str
    timeout_s: int
    memory_mb: int
    environment: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class LocalResources:
    endpoint_url: str
    region: str
    stack_name: str
    bucket: str
    input_prefix: str
    output_prefix: str
    queue_url: str
    dlq_url: str
    table: str
    ingest_function: str
    backfill_function: str
    state_machine_arn: str
    api_function: str = ""  # the HTTP API's function (its URL is served by the front door)
    # What the local SQS poller needs to behave like the event source mapping, read back
    # from the deployed mapping, queue and function.
    batch_size: int = 10
    batching_window_s: int = 0
    max_concurrency: int = 2
    function_response_types: tuple[str, ...] = ()
    function_timeout_s: int = 3
    function_memory_mb: int = 128
    visibility_timeout_s: int = 30
    max_receive_count: int = 0
    queue_arn: str = ""
    dlq_arn: str = ""
    state_machine_role_arn: str = ""
    # False when the emulator executes state machines: the API then serves a copy of the
    # deployed machine adapted to moto's interpreter (see `emulator_definition`).
    state_machine_as_deployed: bool = True
    function_environment: Mapping[str, str] = field(default_factory=dict, hash=False)
    backfill_environment: Mapping[str, str] = field(default_factory=dict, hash=False)
    outputs: Mapping[str, str] = field(default_factory=dict, hash=False)
    # Every function of the template, as deployed (name, handler, limits, environment).
    functions: tuple[DeployedFunction, ...] = ()
    # The template's parameter values (defaults overlaid with the overrides).
    parameters: Mapping[str, str] = field(default_factory=dict, hash=False)

    def function(self, name: str) -> DeployedFunction:
        for deployed in self.functions:
            if deployed.name == name:
                return deployed
        raise KeyError(name)


# ---------------------------------------------------------------- translation (offline)


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


# ---------------------------------------------------------------- adaptation


def adapt_for_emulator(
    template: Mapping[str, Any], parameters: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A copy of the translated template that moto's CloudFormation can create.

    1. Resource types moto has no model for are removed (moto would skip them with a
       warning) and their properties are exposed as extra outputs, so that moto itself
       resolves their intrinsic functions; provision applies them through the API.
    2. Likewise for the properties moto ignores on resources it does create.
    3. The SQS event source mapping is created disabled: moto's own SQS trigger would
       consume messages on every SendMessage and try to run the function in Docker. The
       local stack's poller plays the mapping's part, with its settings read back.
    4. DefinitionSubstitutions are resolved into the state machine's DefinitionString
       (moto ignores the property; CloudFormation would do the same substitution).
    5. List items that are `Fn::If [cond, X, !Ref AWS::NoValue]` (the optional model
       policy) are decided here from the parameter values: moto turns a NoValue list item
       into None and then fails on it (CloudFormation drops it). Resources whose
       `Condition` is false are left out the same way.
    6. `Fn::FindInMap` keyed by parameters is looked up here: moto passes Number parameters
       as numbers, which miss the mapping's (string) keys.
    The Lambda Code already points at an S3 object (`translate_template(code_uri=...)`),
    which provision fills with a placeholder zip: moto needs a zip to create a function,
    and the stack runs the functions in its own Runtime API workers, not in moto.
    """
    adapted = copy.deepcopy(dict(template))
    values = resolve_parameters(adapted, parameters)
    conditions = {name: _condition(expr, adapted.get("Conditions", {}), values)
                  for name, expr in adapted.get("Conditions", {}).items()}
    # Resources whose condition is false are left out here, as CloudFormation would.
    adapted["Resources"] = _decide_optional_list_items(
        {lid: r for lid, r in adapted["Resources"].items()
         if conditions.get(r.get("Condition", ""), True)}, conditions)
    adapted["Resources"] = _resolve_find_in_map(adapted["Resources"],
                                                 adapted.get("Mappings", {}), values)
    resources: dict[str, Any] = adapted["Resources"]
    outputs: dict[str, Any] = adapted.setdefault("Outputs", {})
    removed = [lid for lid, r in resources.items() if r["Type"] in API_APPLIED_TYPES]
    for logical_id in list(resources):
        resource = resources[logical_id]
        rtype = resource["Type"]
        props = resource.setdefault("Properties", {})
        if logical_id in removed:
            outputs[_deferred_output(logical_id)] = {"Value": {"Fn::ToJsonString": props}}
            del resources[logical_id]
            continue
        ignored = {k: props.pop(k) for k in IGNORED_PROPERTIES.get(rtype, ()) if k in props}
        if ignored:
            outputs[_deferred_output(logical_id)] = {"Value": {"Fn::ToJsonString": ignored}}
        if rtype == "AWS::Lambda::EventSourceMapping":
            props["Enabled"] = False
        if rtype == "AWS::StepFunctions::StateMachine":
            _inline_definition_substitutions(props)
            # The resolved text, readable over HTTP whichever backend serves the API.
            outputs[f"{DEFINITION_OUTPUT_PREFIX}{logical_id}"] = {
                "Value": props["DefinitionString"]
            }
    # Outputs of removed resources (the function URL's address) have no local value.
    for name in [n for n, o in outputs.items() if _references(o, removed)]:
        del outputs[name]
    for resource in resources.values():
        depends = resource.get("DependsOn")
        if depends is not None:
            kept = [d for d in ([depends] if isinstance(depends, str) else depends)
                    if d not in removed]
            if kept:
                resource["DependsOn"] = kept
            else:
                del resource["DependsOn"]
    return adapted


def _references(node: Any, logical_ids: Sequence[str]) -> bool:
    """Whether a template fragment names one of `logical_ids` (Ref or Fn::GetAtt)."""
    if isinstance(node, dict):
        if node.get("Ref") in logical_ids:
            return True
        att = node.get("Fn::GetAtt")
        if isinstance(att, list) and att and att[0] in logical_ids:
            return True
        return any(_references(v, logical_ids) for v in node.values())
    if isinstance(node, list):
        return any(_references(v, logical_ids) for v in node)
    return False


def _condition(expr: Any, conditions: Mapping[str, Any], values: Mapping[str, str]) -> bool:
    """Evaluate a template condition over parameter values (the functions conditions use)."""
    from imgpipe.local.template_checks import evaluate

    try:
        return bool(evaluate(expr, values, conditions))
    except ConfigError as e:
        raise ProvisionError(f"cannot evaluate the template condition {expr!r} locally: "
                             f"{e}") from None


def _decide_optional_list_items(node: Any, conditions: Mapping[str, bool]) -> Any:
    no_value = {"Ref": "AWS::NoValue"}
    if isinstance(node, dict):
        return {k: _decide_optional_list_items(v, conditions) for k, v in node.items()}
    if isinstance(node, list):
        items = []
        for item in node:
            if (isinstance(item, dict) and list(item) == ["Fn::If"]
                    and no_value in item["Fn::If"][1:]):
                name, when_true, when_false = item["Fn::If"]
                item = when_true if conditions[name] else when_false
                if item == no_value:
                    continue
            items.append(_decide_optional_list_items(item, conditions))
        return items
    return node


def _resolve_find_in_map(node: Any, mappings: Mapping[str, Any],
                         values: Mapping[str, str]) -> Any:
    from imgpipe.local.template_checks import evaluate

    if isinstance(node, dict):
        if list(node) == ["Fn::FindInMap"]:
            map_name, *keys = node["Fn::FindInMap"]
            found: Any = mappings[map_name]
            for key in keys:
                found = found[str(evaluate(key, values))]
            return found
        return {k: _resolve_find_in_map(v, mappings, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_find_in_map(item, mappings, values) for item in node]
    return node


def _deferred_output(logical_id: str) -> str:
    return f"{DEFERRED_OUTPUT_PREFIX}{logical_id}"


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_.:-]+)\}")


def _inline_definition_substitutions(props: dict[str, Any]) -> None:
    """`DefinitionString` + `DefinitionSubstitutions` -> one `Fn::Join` whose pieces are the
    definition text and the substitution values (intrinsics moto resolves). Fn::Sub would
    also do it, but moto's Fn::Sub runs string.Template, which turns `$$` (the ASL context
    object) into `$`."""
    substitutions = props.pop("DefinitionSubstitutions", None)
    if not substitutions:
        return
    text = _definition_text(props.get("DefinitionString"))
    pieces: list[Any] = []
    last = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.group(1) not in substitutions:
            continue
        pieces.append(text[last:match.start()])
        pieces.append(substitutions[match.group(1)])
        last = match.end()
    pieces.append(text[last:])
    props["DefinitionString"] = {"Fn::Join": ["", [p for p in pieces if p != ""]]}


def _definition_text(definition: Any) -> str:
    if isinstance(definition, str):
        return definition
    if isinstance(definition, dict) and "Fn::Join" in definition:
        separator, parts = definition["Fn::Join"]
        if all(isinstance(p, str) for p in parts):
            return str(separator).join(parts)
    raise ProvisionError(
        "the state machine definition must be inline text (SAM `Definition`) to be "
        "deployed locally"
    )


# ---------------------------------------------------------------- deployment


def provision(
    endpoint_url: str,
    *,
    template_path: Path | None = None,
    parameters: Mapping[str, str] | None = None,
    region: str = "us-east-1",
    stack_name: str = "imgpipe",
    timeout_s: float = 60.0,
    reset: bool = True,
) -> LocalResources:
    """Deploy the template into the moto server at `endpoint_url` and return its resources.

    `reset`: moto's state lives in the process, shared by every server started in it, so a
    new ThreadedMotoServer still holds what an earlier one created. By default the emulator
    is emptied first (POST /moto-api/reset; its configuration is kept), so each call gets
    the fresh deployment a new server promises. Pass False to deploy a second stack (other
    names) next to a live one.
    """

    parameters = local_parameters(parameters)
    sam = load_sam_template(template_path)
    values = resolve_parameters(sam, parameters)
    check_parameter_rules(values, sam)

    session = local_session(region)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint_url)

    if reset:
        _reset_emulator(endpoint_url)
    s3, cfn = client("s3"), client("cloudformation")
    try:
        existing = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except cfn.exceptions.ClientError:
        existing = []
    if any(st["StackStatus"] != "DELETE_COMPLETE" for st in existing):
        raise ProvisionError(
            f"stack {stack_name} already exists in the emulator at {endpoint_url} (moto's "
            f"state is shared by every server in this process); provision with reset=True "
            f"or another stack name"
        )
    staging = f"{stack_name}-local-artifacts"
    _create_bucket(s3, staging, region)
    s3.put_object(Bucket=staging, Key=PLACEHOLDER_CODE_KEY, Body=_placeholder_zip())

    translated = translate_template(template_path, parameters, region=region,
                                    code_uri=f"s3://{staging}/{PLACEHOLDER_CODE_KEY}")
    template = adapt_for_emulator(translated, parameters)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        # moto creates the resources inside this call: a resource it cannot create
        # surfaces here (as an error response, or a 500 page botocore cannot parse).
        cfn.create_stack(
            StackName=stack_name,
            TemplateBody=json.dumps(template),
            Parameters=[{"ParameterKey": k, "ParameterValue": v}
                        for k, v in (parameters or {}).items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
    except (ClientError, BotoCoreError) as e:
        raise ProvisionError(
            f"the emulator refused stack {stack_name}: {e} (the emulator's log names the "
            f"resource; provision.adapt_for_emulator lists what is adapted for moto)"
        ) from e
    stack = _wait_for_stack(cfn, stack_name, timeout_s)
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])}
    # moto reports no physical id for some resources (a Lambda permission): none needs one.
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
        if "PhysicalResourceId" in r
    }

    deferred = {
        key[len(DEFERRED_OUTPUT_PREFIX):]: json.loads(value)
        for key, value in outputs.items() if key.startswith(DEFERRED_OUTPUT_PREFIX)
    }
    definitions = [v for k, v in outputs.items() if k.startswith(DEFINITION_OUTPUT_PREFIX)]
    public_outputs = {k: v for k, v in outputs.items()
                      if not k.startswith(_LOCAL_OUTPUT_PREFIXES)}
    apply_deferred(client, translated["Resources"], deferred, physical, stack_name)

    state_machine_arn = public_outputs["StateMachineArn"]
    role_arn, as_deployed = _ensure_state_machine_reachable(
        client("stepfunctions"), client("iam"), state_machine_arn, definitions[0],
        translated, physical,
    )
    resources = _read_back(client, endpoint_url, region, stack_name, public_outputs,
                           state_machine_arn, role_arn, as_deployed)
    return dataclasses.replace(resources, parameters=values, functions=tuple(
        _deployed_function(client("lambda"), physical[lid])
        for lid, r in translated["Resources"].items() if r["Type"] == "AWS::Lambda::Function"))


def _deployed_function(lam: Any, name: str) -> DeployedFunction:
    config = lam.get_function_configuration(FunctionName=name)
    return DeployedFunction(
        name=config["FunctionName"], handler=config["Handler"],
        timeout_s=int(config["Timeout"]), memory_mb=int(config["MemorySize"]),
        environment=dict(config.get("Environment", {}).get("Variables", {})),
    )


def deployed_state_machine_definition(
    resources: LocalResources, *, executed: bool = False
) -> dict[str, Any]:
    """The backfill state machine's definition as CloudFormation deployed it (the template's
    `Definition`, substitutions resolved); with `executed=True`, the one the emulator's
    Step Functions API serves (differs when the emulator executes state machines, see
    `emulator_definition`)."""

    session = local_session(resources.region)
    if executed:
        sfn = session.client("stepfunctions", endpoint_url=resources.endpoint_url)
        text = sfn.describe_state_machine(
            stateMachineArn=resources.state_machine_arn)["definition"]
    else:
        cfn = session.client("cloudformation", endpoint_url=resources.endpoint_url)
        stack = cfn.describe_stacks(StackName=resources.stack_name)["Stacks"][0]
        texts = [o["OutputValue"] for o in stack.get("Outputs", [])
                 if o["OutputKey"].startswith(DEFINITION_OUTPUT_PREFIX)]
        if len(texts) != 1:
            raise ProvisionError(f"stack {resources.stack_name} has {len(texts)} state "
                                 f"machine definitions, expected 1")
        text = texts[0]
    definition: dict[str, Any] = json.loads(text)
    return definition


# ---------------------------------------------------------------- helpers


def local_session(region: str) -> Any:
    """A boto3 session with the emulator's dummy credentials."""
    import boto3

    return boto3.session.Session(region_name=region, **CREDENTIALS)


def moto_api(endpoint_url: str, action: str, settings: Mapping[str, Any] | None = None) -> None:
    """POST to the emulator's own API (`reset`, `config`, ...)."""
    import urllib.request

    body = json.dumps(settings).encode() if settings is not None else b""
    request = urllib.request.Request(f"{endpoint_url.rstrip('/')}/moto-api/{action}", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except OSError as e:
        raise ProvisionError(f"the emulator at {endpoint_url} refused {action}: {e}") from None


def _reset_emulator(endpoint_url: str) -> None:
    moto_api(endpoint_url, "reset")


def _placeholder_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(
            "README.txt",
            "Placeholder for the imgpipe function code: the local stack runs the functions "
            "in worker processes of its own; on AWS `sam build` packages the code.\n",
        )
    return buf.getvalue()


def _create_bucket(s3: Any, name: str, region: str) -> None:
    kwargs: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(**kwargs)


def _wait_for_stack(cfn: Any, stack_name: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        stack: dict[str, Any] = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        status = stack["StackStatus"]
        if status == "CREATE_COMPLETE":
            return stack
        if not status.endswith("_IN_PROGRESS"):
            events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
            failures = [
                f"{e['LogicalResourceId']} ({e.get('ResourceType', '?')}): "
                f"{e.get('ResourceStatusReason', 'no reason given')}"
                for e in events if e.get("ResourceStatus", "").endswith("_FAILED")
            ]
            reason = stack.get("StackStatusReason", "")
            raise ProvisionError(
                f"stack {stack_name} ended in {status}"
                + (f": {reason}" if reason else "")
                + ("; failed resources: " + "; ".join(failures) if failures else "")
            )
        if time.monotonic() > deadline:
            raise ProvisionError(f"stack {stack_name} still {status} after {timeout_s:.0f} s")
        time.sleep(0.2)


def _ensure_state_machine_reachable(
    sfn: Any, iam: Any, arn: str, definition: str,
    translated: Mapping[str, Any], physical: Mapping[str, str],
) -> tuple[str, bool]:
    """moto keeps two Step Functions backends: CloudFormation always creates into the plain
    one, but a server configured with `{"stepfunctions": {"execute_state_machine": true}}`
    answers the API from the executing one, where the stack's machine does not exist. Then
    the deployed definition is registered there under the same name and role, adapted by
    `emulator_definition` (that backend validates definitions with its own ASL grammar).

    Returns the machine's role ARN and whether the API serves the deployed definition."""
    logical_id = next(lid for lid, r in translated["Resources"].items()
                      if r["Type"] == "AWS::StepFunctions::StateMachine")
    role = translated["Resources"][logical_id]["Properties"].get("RoleArn", {})
    role_name = physical.get(role["Fn::GetAtt"][0], "") if "Fn::GetAtt" in role else ""
    role_arn: str = iam.get_role(RoleName=role_name)["Role"]["Arn"] if role_name else ""
    try:
        sfn.describe_state_machine(stateMachineArn=arn)
        return role_arn, True
    except sfn.exceptions.StateMachineDoesNotExist:
        pass
    created = sfn.create_state_machine(
        name=arn.rsplit(":", 1)[1],
        definition=emulator_definition(definition),
        roleArn=role_arn,
        type="STANDARD",
    )
    if created["stateMachineArn"] != arn:  # pragma: no cover - moto derives both the same way
        raise ProvisionError(f"the executable state machine got {created['stateMachineArn']}, "
                             f"not the stack's {arn}")
    return role_arn, False


def _read_back(
    client: Callable[[str], Any],
    endpoint_url: str,
    region: str,
    stack_name: str,
    outputs: Mapping[str, str],
    state_machine_arn: str,
    role_arn: str,
    as_deployed: bool,
) -> LocalResources:
    sqs, lam = client("sqs"), client("lambda")
    # moto's CloudFormation returns queue URLs on sqs.<region>.amazonaws.com; ask the
    # endpoint for the URLs it serves, which also work with the aws CLI.
    queue_url = sqs.get_queue_url(QueueName=outputs["QueueUrl"].rsplit("/", 1)[1])["QueueUrl"]
    dlq_url = sqs.get_queue_url(QueueName=outputs["DlqUrl"].rsplit("/", 1)[1])["QueueUrl"]
    queue = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]
    redrive = json.loads(queue.get("RedrivePolicy") or "{}")
    ingest = lam.get_function_configuration(FunctionName=outputs["IngestFunctionName"])
    backfill = lam.get_function_configuration(FunctionName=outputs["BackfillFunctionName"])
    mappings = lam.list_event_source_mappings(
        FunctionName=outputs["IngestFunctionName"])["EventSourceMappings"]
    mapping = next((m for m in mappings if m["EventSourceArn"] == queue["QueueArn"]), None)
    if mapping is None:
        raise ProvisionError("the ingest function has no event source mapping on the queue")
    return LocalResources(
        endpoint_url=endpoint_url,
        region=region,
        stack_name=stack_name,
        bucket=outputs["BucketName"],
        input_prefix=outputs["InputPrefix"],
        output_prefix=outputs["OutputPrefix"],
        queue_url=queue_url,
        dlq_url=dlq_url,
        table=outputs["TableName"],
        ingest_function=outputs["IngestFunctionName"],
        api_function=outputs.get("ApiFunctionName", ""),
        backfill_function=outputs["BackfillFunctionName"],
        state_machine_arn=state_machine_arn,
        batch_size=int(mapping["BatchSize"]),
        batching_window_s=int(mapping.get("MaximumBatchingWindowInSeconds") or 0),
        max_concurrency=int((mapping.get("ScalingConfig") or {}).get("MaximumConcurrency", 2)),
        function_response_types=tuple(mapping.get("FunctionResponseTypes") or ()),
        function_timeout_s=int(ingest["Timeout"]),
        function_memory_mb=int(ingest["MemorySize"]),
        visibility_timeout_s=int(queue["VisibilityTimeout"]),
        max_receive_count=int(redrive.get("maxReceiveCount", 0)),
        queue_arn=queue["QueueArn"],
        dlq_arn=dlq["QueueArn"],
        state_machine_role_arn=role_arn,
        state_machine_as_deployed=as_deployed,
        function_environment=dict(ingest.get("Environment", {}).get("Variables", {})),
        backfill_environment=dict(backfill.get("Environment", {}).get("Variables", {})),
        outputs=dict(outputs),
    )
