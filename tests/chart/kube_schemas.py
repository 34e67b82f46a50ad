"""JSON schemas for kubeconform, made from what the pinned Kubernetes itself serves.

kubeconform normally downloads schemas from GitHub, which tests cannot reach. The local control
plane's kube-apiserver (the pinned version) serves its OpenAPI v2 document; each kind the chart
renders becomes one standalone, strict schema (the kind's definition with every definition it
refers to, and no field beyond the known ones). The Prometheus Operator's kinds come from its CRDs,
taken from its Go module (the Go module proxy) at PROMETHEUS_OPERATOR_VERSION.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
# kubeconform's name for a kind's schema file under the folder. kubeconform's Group is the part of
# apiVersion before the slash: the version itself for the core group ("v1").
FILE_TEMPLATE = "{{ .ResourceKind }}_{{ .Group }}_{{ .ResourceAPIVersion }}.json"

INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}


def file_name(group: str, version: str, kind: str) -> str:
    return f"{kind.lower()}_{group or version}_{version}.json"


def write_schemas(openapi_v2: dict[str, Any], crds: Iterable[dict[str, Any]], folder: Path) -> list[str]:
    """Write a schema per kind the API server and the CRDs define; return the file names."""
    definitions = {
        # quantities are written as strings or numbers (`cpu: 1`); the document says only string
        name: QUANTITY if name.endswith(".api.resource.Quantity") else _strict(body)
        for name, body in openapi_v2["definitions"].items()
    }
    written = []
    for name, body in openapi_v2["definitions"].items():
        for gvk in body.get("x-kubernetes-group-version-kind", []):
            closure = _closure(name, definitions)
            schema = {**definitions[name], "definitions": {n: definitions[n] for n in closure if n != name}}
            target = file_name(gvk["group"], gvk["version"], gvk["kind"])
            (folder / target).write_text(json.dumps(_local_refs(schema, name)))
            written.append(target)
    for crd in crds:
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            target = file_name(spec["group"], version["name"], spec["names"]["kind"])
            (folder / target).write_text(json.dumps(schema))
            written.append(target)
    return written


def prometheus_operator_crds() -> list[dict[str, Any]]:
    """The Prometheus Operator's CRDs, from its Go module at the pinned version."""
    module = f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"
    downloaded = subprocess.run(
        ["go", "mod", "download", "-json", module],
        capture_output=True, text=True, check=True, env={**os.environ, "GOFLAGS": "-mod=mod"},
    )  # fmt: skip
    folder = Path(json.loads(downloaded.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    paths = sorted(folder.glob("monitoring.coreos.com_*.yaml"))
    return [yaml.load(path.read_text(), Loader=_CrdLoader) for path in paths]  # a SafeLoader


class _CrdLoader(yaml.SafeLoader):
    """PyYAML reads a bare `=` (a relabelling action in the CRDs' enums) as YAML 1.1's value tag."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def _strict(schema: Any) -> Any:
    """The schema with no field beyond its known ones, and Kubernetes' string-or-number formats.

    Walks only the keywords that hold schemas, so a field named like a keyword (JSONSchemaProps
    has `properties`, `format`, `x-kubernetes-int-or-string`) stays a field.
    """
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "int-or-string" or schema.get("x-kubernetes-int-or-string") is True:
        return INT_OR_STRING
    out = dict(schema)
    for keyword in ("properties", "patternProperties", "definitions"):
        if isinstance(out.get(keyword), dict):
            out[keyword] = {name: _strict(value) for name, value in out[keyword].items()}
    for keyword in ("items", "additionalProperties", "not"):
        if isinstance(out.get(keyword), dict):
            out[keyword] = _strict(out[keyword])
    for keyword in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(keyword), list):
            out[keyword] = [_strict(value) for value in out[keyword]]
    if (
        isinstance(out.get("properties"), dict)
        and "additionalProperties" not in out
        and out.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        out["additionalProperties"] = False
    return out


def _closure(name: str, definitions: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [ref.rsplit("/", 1)[-1] for ref in _refs(definitions[current])]
    return seen


def _refs(schema: Any) -> Iterable[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("$ref"), str):
            yield schema["$ref"]
        for value in schema.values():
            yield from _refs(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _refs(item)


def _local_refs(schema: Any, root: str) -> Any:
    """Refs to the kind's own definition point at the document's root."""
    if isinstance(schema, dict):
        if schema.get("$ref") == f"#/definitions/{root}":
            return {**schema, "$ref": "#"}
        return {key: _local_refs(value, root) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_local_refs(item, root) for item in schema]
    return schema
