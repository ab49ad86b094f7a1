"""The translated template adapted for moto's CloudFormation, as pure functions of the
template and the parameters (`adapt_for_emulator` lists each adaptation): one function per
resource kind (`ADAPTERS`, resource type -> function), and a driver that decides the
template's conditions and mappings and applies them. What moto ignores is set aside as
stack outputs, which `deferred.py` applies after the stack exists."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgpipe.local.errors import ProvisionError
from imgpipe.local.translate import resolve_parameters
from pipeline.errors import ConfigError

__all__ = ["ADAPTERS", "API_APPLIED_TYPES", "DEFERRED_OUTPUT_PREFIX", "DEFINITION_OUTPUT_PREFIX",
           "IGNORED_PROPERTIES", "Adapted", "adapt_for_emulator", "defer_to_api",
           "disable_event_source_mapping", "inline_state_machine_definition",
           "set_aside_ignored_properties"]

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
    outputs: dict[str, Any] = adapted.setdefault("Outputs", {})
    resources: dict[str, Any] = {}
    removed: list[str] = []
    for logical_id, resource in adapted["Resources"].items():
        resource = {**resource, "Properties": resource.get("Properties", {})}
        adapter = ADAPTERS.get(resource["Type"])
        result = adapter(logical_id, resource) if adapter else Adapted(resource)
        outputs.update(result.outputs)
        if result.resource is None:
            removed.append(logical_id)
        else:
            resources[logical_id] = result.resource
    adapted["Resources"] = resources
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


# ---- one adaptation per resource kind: pure functions of (logical id, resource) ----------


@dataclass(frozen=True)
class Adapted:
    """What one resource becomes for moto: the resource (None: left out of the stack) and
    the stack outputs it adds."""

    resource: dict[str, Any] | None
    outputs: dict[str, Any] = field(default_factory=dict)


def defer_to_api(logical_id: str, resource: Mapping[str, Any]) -> Adapted:
    """A type moto has no model for (`API_APPLIED_TYPES`): left out of the stack, its
    properties an output that moto resolves, applied through the API afterwards."""
    properties = copy.deepcopy(resource.get("Properties", {}))
    return Adapted(None, {_deferred_output(logical_id): {"Value": {"Fn::ToJsonString":
                                                                   properties}}})


def set_aside_ignored_properties(logical_id: str, resource: Mapping[str, Any]) -> Adapted:
    """A resource moto creates but some of whose properties it ignores
    (`IGNORED_PROPERTIES`): those properties move to an output, applied afterwards."""
    names = IGNORED_PROPERTIES[resource["Type"]]
    properties = copy.deepcopy(dict(resource.get("Properties", {})))
    ignored = {k: properties.pop(k) for k in names if k in properties}
    outputs = ({_deferred_output(logical_id): {"Value": {"Fn::ToJsonString": ignored}}}
               if ignored else {})
    return Adapted({**copy.deepcopy(dict(resource)), "Properties": properties}, outputs)


def disable_event_source_mapping(logical_id: str, resource: Mapping[str, Any]) -> Adapted:
    """The SQS event source mapping, created disabled: moto's own trigger would consume
    the messages and run the function in Docker; the local stack's poller plays its part."""
    properties = {**copy.deepcopy(dict(resource.get("Properties", {}))), "Enabled": False}
    return Adapted({**copy.deepcopy(dict(resource)), "Properties": properties})


def inline_state_machine_definition(logical_id: str, resource: Mapping[str, Any]) -> Adapted:
    """A state machine whose DefinitionSubstitutions are resolved into its
    DefinitionString (moto ignores the property); the resolved text is also an output,
    readable over HTTP whichever backend serves the API."""
    properties = _inline_definition_substitutions(resource.get("Properties", {}))
    return Adapted({**copy.deepcopy(dict(resource)), "Properties": properties},
                   {f"{DEFINITION_OUTPUT_PREFIX}{logical_id}":
                    {"Value": properties["DefinitionString"]}})


Adapter = Callable[[str, Mapping[str, Any]], Adapted]
# Resource type -> its adaptation; a type not listed is created as it is.
ADAPTERS: dict[str, Adapter] = {
    **{rtype: defer_to_api for rtype in API_APPLIED_TYPES},
    **{rtype: set_aside_ignored_properties for rtype in IGNORED_PROPERTIES},
    "AWS::Lambda::EventSourceMapping": disable_event_source_mapping,
    "AWS::StepFunctions::StateMachine": inline_state_machine_definition,
}


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


def _inline_definition_substitutions(properties: Mapping[str, Any]) -> dict[str, Any]:
    """`DefinitionString` + `DefinitionSubstitutions` -> one `Fn::Join` whose pieces are the
    definition text and the substitution values (intrinsics moto resolves); a new copy of
    `props`. Fn::Sub would also do it, but moto's Fn::Sub runs string.Template, which turns
    `$$` (the ASL context object) into `$`."""
    props: dict[str, Any] = copy.deepcopy(dict(properties))
    substitutions = props.pop("DefinitionSubstitutions", None)
    if not substitutions:
        return props
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
    return props


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
