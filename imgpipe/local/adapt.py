"""The translated template adapted for moto's CloudFormation, as pure functions of the
template and the parameters (`adapt_for_emulator` lists each adaptation). What moto
ignores is set aside as stack outputs, which `deferred.py` applies after the stack exists."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from imgpipe.local.errors import ProvisionError
from imgpipe.local.translate import resolve_parameters
from pipeline.errors import ConfigError

__all__ = ["API_APPLIED_TYPES", "DEFERRED_OUTPUT_PREFIX", "DEFINITION_OUTPUT_PREFIX",
           "IGNORED_PROPERTIES", "adapt_for_emulator"]

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
