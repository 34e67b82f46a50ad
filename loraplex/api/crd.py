"""Generates the CustomResourceDefinitions in crds/ from the API models.

pydantic writes JSON Schema; a CRD needs a *structural* OpenAPI v3.0 schema.
`structural()` closes that gap: it inlines `$ref`s, turns `X | None` into an
optional X, rewrites JSON Schema's numeric `exclusiveMinimum` into OpenAPI's
boolean form, and drops what structural schemas forbid (`additionalProperties:
false` beside `properties`, titles, `null` defaults).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel

from loraplex.api import BASE_MODELS, GROUP, LORA_ADAPTERS, TRAINING_JOBS, VERSION, WORKER_PLACEMENTS
from loraplex.api.adapter import LoRAAdapterSpec, LoRAAdapterStatus
from loraplex.api.basemodel import BaseModelSpec, BaseModelStatus
from loraplex.api.common import cel
from loraplex.api.labels import PART_OF
from loraplex.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from loraplex.api.workerplacement import WorkerPlacementSpec, WorkerPlacementStatus

Schema = dict[str, Any]

HEADER = "# Generated from loraplex/api by `loraplex crds generate`; do not edit by hand.\n"


@dataclass(frozen=True)
class Kind:
    """Everything that names and shows one custom resource kind."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[dict[str, Any], ...]
    root_rules: tuple[dict[str, Any], ...] = field(default=())
    scale: dict[str, str] | None = None  # the scale subresource's paths, for kubectl scale and HPAs

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _ready_columns() -> tuple[dict[str, Any], ...]:
    return (
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    )


def _name_rule(max_length: int, what: str) -> dict[str, Any]:
    return cel(
        f"self.metadata.name.size() <= {max_length} && "
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        f"metadata.name must start with a letter, hold only lower-case letters, digits and '-', "
        f"and be at most {max_length} characters ({what})",
    )


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

KINDS: tuple[Kind, ...] = (
    Kind(
        kind="BaseModel",
        plural=BASE_MODELS,
        short_names=("bm",),
        spec=BaseModelSpec,
        status=BaseModelStatus,
        columns=(
            *_ready_columns(),
            {
                "name": "Workers",
                "type": "string",
                "jsonPath": ".status.workers",
                "description": "Ready / desired workers",
            },
            {
                "name": "GPU-Slots",
                "type": "string",
                "jsonPath": ".status.slotsSummary",
                "description": "GPU adapter slots used / total",
            },
            {"name": "Requests", "type": "number", "jsonPath": ".status.requests", "priority": 1},
            {"name": "Model", "type": "string", "jsonPath": ".spec.model.uri", "priority": 1},
            _AGE,
        ),
        root_rules=(_name_rule(40, "it prefixes the worker StatefulSet and Service names"),),
        # `kubectl scale bm/x --replicas=N` and HorizontalPodAutoscalers set the fleet's floor,
        # replicas.min; adapter demand may still grow it up to replicas.max.
        scale={
            "specReplicasPath": ".spec.replicas.min",
            "statusReplicasPath": ".status.readyWorkers",
            "labelSelectorPath": ".status.workerSelector",
        },
    ),
    Kind(
        kind="LoRAAdapter",
        plural=LORA_ADAPTERS,
        short_names=("lora", "loras"),
        spec=LoRAAdapterSpec,
        status=LoRAAdapterStatus,
        columns=(
            {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {
                "name": "Copies",
                "type": "string",
                "jsonPath": ".status.copies",
                "description": "Ready copies / desired",
            },
            *_ready_columns(),
            {"name": "Policy", "type": "string", "jsonPath": ".spec.policy", "priority": 1},
            {"name": "Rank", "type": "integer", "jsonPath": ".spec.rank", "priority": 1},
            _AGE,
        ),
    ),
    Kind(
        kind="TrainingJob",
        plural=TRAINING_JOBS,
        short_names=("tj",),
        spec=TrainingJobSpec,
        status=TrainingJobStatus,
        columns=(
            {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
            {"name": "Total", "type": "integer", "jsonPath": ".status.progress.totalSteps"},
            {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
            {"name": "Adapter", "type": "string", "jsonPath": ".spec.output.adapterName"},
            *_ready_columns()[1:],
            {"name": "Trainer", "type": "string", "jsonPath": ".status.placement.trainer", "priority": 1},
            {"name": "Node", "type": "string", "jsonPath": ".status.placement.node", "priority": 1},
            _AGE,
        ),
        root_rules=(_name_rule(52, "it names the trainer pods"),),
    ),
    Kind(
        kind="WorkerPlacement",
        plural=WORKER_PLACEMENTS,
        short_names=("wp",),
        spec=WorkerPlacementSpec,
        status=WorkerPlacementStatus,
        columns=(
            {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel"},
            {"name": "Worker", "type": "string", "jsonPath": ".spec.worker"},
            {
                "name": "Held",
                "type": "string",
                "jsonPath": ".status.held",
                "description": "Adapters held / wanted",
            },
            *_ready_columns(),
            _AGE,
        ),
    ),
)


def structural(model: type[BaseModel]) -> Schema:
    """The model's JSON Schema rewritten as a structural OpenAPI v3.0 schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs)


_DROP = {"title", "$defs"}

# What `kubectl explain` shows for the fields every object has (the wording of Kubernetes' own types).
API_VERSION_DESCRIPTION = (
    "APIVersion defines the versioned schema of this representation of an object. Servers should convert "
    "recognized schemas to the latest internal value, and may reject unrecognized values."
)
KIND_DESCRIPTION = (
    "Kind is a string value representing the REST resource this object represents. Servers may infer this "
    "from the endpoint the client submits requests to. In CamelCase."
)


def _convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[1]]
        node = {**copy.deepcopy(target), **node}  # siblings (description, default) win
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        node = {**_convert(inner, defs), **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions other than X | None have no structural form: {options}")
        node = {**_convert(options[0], defs), **node}
        if node.get("default", 0) is None:
            del node["default"]
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, defs)
        elif key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields instead
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("required", [])
        if not out["required"]:
            del out["required"]
    return out


def _with_object_defaults(schema: Schema) -> Schema:
    """Default optional object fields whose own fields all have defaults (and no rules) to `{}`.

    The apiserver then fills in their inner defaults on admission, so CEL rules
    and `kubectl get -o yaml` see the effective values.
    """
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        _with_object_defaults(prop)
        is_object = prop.get("type") == "object" and "properties" in prop
        # An object with rules of its own is left absent: the empty object may not pass them.
        bare = not prop.get("required") and "x-kubernetes-validations" not in prop
        if is_object and name not in required and "default" not in prop and bare:
            prop["default"] = {}
    return schema


def openapi_schema(kind: Kind) -> Schema:
    """The whole object's schema: apiVersion, kind, metadata, spec, status."""
    spec = _with_object_defaults(structural(kind.spec))
    spec["description"] = f"Desired state of the {kind.kind}."
    status = structural(kind.status)
    status["description"] = f"Observed state of the {kind.kind}, written by the operator."
    schema: Schema = {
        "type": "object",
        "description": (kind.spec.__doc__ or "").strip() or kind.kind,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": API_VERSION_DESCRIPTION},
            "kind": {"type": "string", "description": KIND_DESCRIPTION},
            # The apiserver forbids anything but a type here; it documents metadata as ObjectMeta itself.
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if kind.root_rules:
        schema["x-kubernetes-validations"] = list(kind.root_rules)
    return schema


def crd(kind: Kind) -> Schema:
    """The CustomResourceDefinition manifest of one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": dict(PART_OF)},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["loraplex"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}, **({"scale": kind.scale} if kind.scale else {})},
                    "additionalPrinterColumns": list(kind.columns),
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                }
            ],
        },
    }


def render(kind: Kind) -> str:
    """The CRD as the YAML text kept in crds/."""
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def file_name(kind: Kind) -> str:
    return f"{GROUP}_{kind.plural}.yaml"
