"""Deploy infra/template.yaml into moto's server: one template, two targets, no drift.

    resources = provision("http://127.0.0.1:4566")
    resources.bucket, resources.queue_url, resources.state_machine_arn, ...

The SAM template is translated offline (aws-sam-translator, no AWS call), adapted where the
emulator cannot take it (each adaptation is listed in `adapt_for_emulator` and explained
where it happens), created as a CloudFormation stack in moto over HTTP, and then completed
through the service APIs for what moto's CloudFormation creates but ignores. Every name and
setting comes from the translated template and the deployed resources; this module has no
second copy of them.

One module per step: `translate.py` (SAM -> CloudFormation, parameters), `adapt.py` (the
template moto can create, pure functions), `state_machine.py` (the ASL moto's interpreter
runs), `deferred.py` (the appliers of what moto ignores, one per resource type) and this
one (deploy, then read the resources back).

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
import dataclasses
import io
import json
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgpipe.local.adapt import (
    _LOCAL_OUTPUT_PREFIXES,
    DEFERRED_OUTPUT_PREFIX,
    DEFINITION_OUTPUT_PREFIX,
    adapt_for_emulator,
)
from imgpipe.local.deferred import apply_deferred
from imgpipe.local.errors import ProvisionError
from imgpipe.local.state_machine import LOCAL_PLANNER, emulator_definition
from imgpipe.local.translate import (
    CREDENTIALS,
    DEFAULT_TEMPLATE,
    LOCAL_BUCKET,
    PLACEHOLDER_CODE_KEY,
    check_parameter_rules,
    load_sam_template,
    local_parameters,
    local_session,
    resolve_parameters,
    translate_template,
)

__all__ = [
    "CREDENTIALS",
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
    _refuse_existing_stack(cfn, stack_name, endpoint_url)
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
    outputs, physical = _created_stack(cfn, stack_name, timeout_s)

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


def _created_stack(cfn: Any, stack_name: str,
                   timeout_s: float) -> tuple[dict[str, str], dict[str, str]]:
    """The created stack's outputs and physical ids (logical id -> physical id)."""
    stack = _wait_for_stack(cfn, stack_name, timeout_s)
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])}
    # moto reports no physical id for some resources (a Lambda permission): none needs one.
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
        if "PhysicalResourceId" in r
    }
    return outputs, physical


def _refuse_existing_stack(cfn: Any, stack_name: str, endpoint_url: str) -> None:
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
