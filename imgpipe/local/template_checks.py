"""What CloudFormation checks before it creates anything, evaluated from the template itself.

    check_parameters(template, values)   # raises ConfigError with the template's sentence

CloudFormation refuses a deploy up front when a parameter breaks its own constraints
(AllowedValues, AllowedPattern, Min/MaxValue, Min/MaxLength), when a `Rules` assertion is
false, or when an `Fn::FindInMap` names a key the mapping lacks. The local stack deploys
into moto, which checks none of these, so `provision` runs this first: the same template
sections, the same verdicts, one definition for both targets.

Only what Rules and Conditions may use is supported: `Ref` to parameters, `Condition`,
`Fn::Equals`, `Fn::Not`, `Fn::And`, `Fn::Or`, `Fn::Contains`, `Fn::EachMemberEquals`,
`Fn::EachMemberIn`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pipeline.errors import ConfigError

__all__ = ["check_parameters", "evaluate", "find_in_map_lookups"]


def check_parameters(template: Mapping[str, Any], values: Mapping[str, str]) -> None:
    """Raise ConfigError for the first parameter, rule or mapping lookup that fails."""
    for name, spec in template.get("Parameters", {}).items():
        _check_constraints(name, spec, str(values.get(name, spec.get("Default", ""))))
    for name, rule in template.get("Rules", {}).items():
        condition = rule.get("RuleCondition")
        if condition is not None and not evaluate(condition, values):
            continue
        for assertion in rule.get("Assertions", []):
            if not evaluate(assertion["Assert"], values):
                description = " ".join(str(assertion.get("AssertDescription", "")).split())
                raise ConfigError(f"template rule {name} failed: "
                                  f"{description or 'its assertion is false'}")
    mappings = template.get("Mappings", {})
    for map_name, keys in find_in_map_lookups(template.get("Resources", {})):
        resolved = [_value(k, values) for k in keys]
        level: Any = mappings.get(map_name)
        for key in resolved:
            if not isinstance(level, Mapping) or key not in level:
                raise ConfigError(
                    f"no {map_name} entry for {' / '.join(resolved)}: the template's "
                    f"Mappings.{map_name} has none (use a listed parameter value)"
                )
            level = level[key]


def evaluate(expr: Any, values: Mapping[str, str],
             conditions: Mapping[str, Any] | None = None) -> Any:
    """A Rules/Conditions expression over parameter values: bools, strings, lists."""
    if isinstance(expr, list):
        return [evaluate(e, values, conditions) for e in expr]
    if not isinstance(expr, Mapping):
        return str(expr)
    if len(expr) != 1:
        raise ConfigError(f"cannot evaluate the template expression {dict(expr)!r}")
    fn, args = next(iter(expr.items()))
    if fn == "Ref":
        return _value(expr, values)
    if fn == "Condition":
        if conditions is None or args not in conditions:
            raise ConfigError(f"the template names an unknown condition {args!r}")
        return bool(evaluate(conditions[args], values, conditions))
    arguments = [evaluate(a, values, conditions) for a in _as_list(args)]
    if fn == "Fn::Equals":
        return arguments[0] == arguments[1]
    if fn == "Fn::Not":
        return not arguments[0]
    if fn == "Fn::And":
        return all(arguments)
    if fn == "Fn::Or":
        return any(arguments)
    if fn == "Fn::Contains":
        return arguments[1] in arguments[0]
    if fn == "Fn::EachMemberEquals":
        return all(v == arguments[1] for v in _as_list(arguments[0]))
    if fn == "Fn::EachMemberIn":
        return all(v in arguments[1] for v in _as_list(arguments[0]))
    raise ConfigError(f"cannot evaluate {fn} locally (not a Rules/Conditions function)")


def find_in_map_lookups(node: Any) -> Iterator[tuple[str, list[Any]]]:
    """Every `Fn::FindInMap` in `node`: (map name, [top-level key, second-level key])."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "Fn::FindInMap":
                yield str(value[0]), list(value[1:3])
            else:
                yield from find_in_map_lookups(value)
    elif isinstance(node, list):
        for item in node:
            yield from find_in_map_lookups(item)


def _check_constraints(name: str, spec: Mapping[str, Any], value: str) -> None:
    hint = spec.get("ConstraintDescription")

    def fail(why: str) -> ConfigError:
        return ConfigError(f"parameter {name}={value!r} {why}" + (f" ({hint})" if hint else ""))

    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(v) for v in allowed]:
        raise fail("is not one of " + ", ".join(str(v) for v in allowed))
    pattern = spec.get("AllowedPattern")
    if pattern is not None and re.fullmatch(str(pattern), value) is None:
        raise fail(f"does not match the pattern {pattern}")
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            raise fail("is not a number") from None
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise fail(f"is below the minimum {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise fail(f"is above the maximum {spec['MaxValue']}")
    if "MinLength" in spec and len(value) < int(spec["MinLength"]):
        raise fail(f"is shorter than {spec['MinLength']} characters")
    if "MaxLength" in spec and len(value) > int(spec["MaxLength"]):
        raise fail(f"is longer than {spec['MaxLength']} characters")


def _value(expr: Any, values: Mapping[str, str]) -> str:
    if isinstance(expr, Mapping) and list(expr) == ["Ref"]:
        name = expr["Ref"]
        if name not in values:
            raise ConfigError(f"the template refers to an unknown parameter {name!r}")
        return str(values[name])
    if isinstance(expr, Mapping):
        raise ConfigError(f"cannot evaluate {dict(expr)!r} locally")
    return str(expr)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
