"""Renders docs/api.md, the field reference of every kind, from the same schemas as the CRDs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from loraplex.api import API_VERSION
from loraplex.api.crd import KINDS, Kind, Schema, openapi_schema

INTRO = f"""# API reference: {API_VERSION}

Generated from `loraplex/api` by `loraplex crds generate`; do not edit by hand.
`kubectl explain <kind>.spec --recursive` shows the same descriptions.

Every rule below is enforced at admission by the apiserver, so a bad manifest
is refused with a message naming the field. Unknown fields are refused by
`kubectl apply` (strict field validation); clients that send no
`fieldValidation` have them pruned instead.
"""


CONDITIONS = """
## Conditions

Every kind's `status.conditions[]` is shaped like `metav1.Condition` (type,
status, reason, message, lastTransitionTime, observedGeneration), and
`status.observedGeneration` says which spec the status describes. `Ready` is
the condition to wait on:

```sh
kubectl wait --for=condition=Ready lora/sql-gen --timeout=5m
```

Flux (`healthChecks`) and Argo CD read the same condition without custom code.
"""


def render() -> str:
    return INTRO + "".join(_kind_section(kind) for kind in KINDS) + CONDITIONS


def _kind_section(kind: Kind) -> str:
    schema = openapi_schema(kind)
    lines = [
        f"\n## {kind.kind}\n",
        f"\n{(kind.spec.__doc__ or '').strip()} Short names: {', '.join(kind.short_names)}; "
        "category: `loraplex`.\n",
    ]
    for rule in schema.get("x-kubernetes-validations", []):
        lines.append(f"\n- {rule['message']}\n")
    for part in ("spec", "status"):
        lines.append(f"\n### {part}\n\n")
        for rule in schema["properties"][part].get("x-kubernetes-validations", []):
            lines.append(f"- {rule['message']}\n")
        lines.append("\n| field | type | default | rules | description |\n|---|---|---|---|---|\n")
        for path, node, required in _fields(schema["properties"][part], part):
            lines.append(_row(path, node, required))
    return "".join(lines)


def _fields(schema: Schema, path: str) -> Iterator[tuple[str, Schema, bool]]:
    required = set(schema.get("required", []))
    for name, node in schema.get("properties", {}).items():
        child = f"{path}.{name}"
        yield child, node, name in required
        yield from _fields(node, child)
        if isinstance(node.get("items"), dict):
            yield from _fields(node["items"], f"{child}[]")


def _row(path: str, node: Schema, required: bool) -> str:
    kind = node["type"]
    if kind == "array" and isinstance(node.get("items"), dict):
        kind = f"array of {node['items']['type']}"
    default = f"`{json.dumps(node['default'])}`" if "default" in node else ("required" if required else "")
    cells = [f"`{path}`", kind, default, _rules(node), _escape(node.get("description", ""))]
    return "| " + " | ".join(cells) + " |\n"


def _rules(node: Schema) -> str:
    rules: list[str] = []
    if "enum" in node:
        rules.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    bounds: list[tuple[str, str, Any]] = [
        ("minimum", ">", node.get("exclusiveMinimum")),
        ("maximum", "<", node.get("exclusiveMaximum")),
    ]
    for key, strict, exclusive in bounds:
        if key in node:
            rules.append(f"{strict if exclusive else strict + '='} {node[key]}")
    for key, text in (
        ("minLength", "length >= {}"),
        ("maxLength", "length <= {}"),
        ("minItems", "items >= {}"),
        ("maxItems", "items <= {}"),
        ("maxProperties", "entries <= {}"),
    ):
        if key in node:
            rules.append(text.format(node[key]))
    if "pattern" in node:
        rules.append(f"matches `{node['pattern']}`")
    rules.extend(rule["message"] for rule in node.get("x-kubernetes-validations", []))
    return _escape("; ".join(rules))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
