"""Field types and parts shared by every kind: names, URIs, digests, conditions.

Each constrained type carries its own admission rule (a pattern, a length
limit, a CEL rule), so a field that uses it is validated by the apiserver with
a message that names the field, before the operator ever sees the object.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every spec/status model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


def cel(
    rule: str,
    message: str,
    field_path: str | None = None,
    reason: str | None = None,
    message_expression: str | None = None,
) -> dict[str, Any]:
    """One `x-kubernetes-validations` entry (`message_expression`: a CEL string that names the culprit)."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if message_expression:
        entry["messageExpression"] = message_expression
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


NO_TRAVERSAL = cel(
    "!self.contains('..') && !self.lowerAscii().contains('%2e')",
    "must not contain '..' (or its URL encoding): paths may not climb out of their root",
)

# A label key (a qualified name) and a label value, as Kubernetes validates them.
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"

# An image reference in the grammar of the distribution spec (docker/distribution's reference
# package, which kubelets and registries use): [domain[:port]/]path[:tag][@digest].
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
IMAGE_REFERENCE = (
    rf"^(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)

# DNS-1123 label: a Kubernetes object name usable in Service and pod names.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# DNS-1123 subdomain: any object name.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

ObjectName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of an object in the same namespace.",
    ),
]
LabelName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="A DNS-1123 label: lower-case letters, digits and '-', at most 63 characters.",
    ),
]

Sha256 = Annotated[
    str,
    Field(
        pattern=r"^[a-f0-9]{64}$",
        min_length=64,
        max_length=64,
        description="Hex sha256 digest (64 lower-case hex digits) of the adapter's files.",
    ),
]

# One path segment of a URI after the scheme and authority: no spaces, no control characters.
_PATH = r"(/[^\s]*)?"
# A claim's path starts with one slash: pvc://claim//abs would name /abs, outside the claim.
_PVC = r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/([^/\s][^\s]*)?)?"
_S3 = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]" + _PATH
_HTTPS = r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?" + _PATH
_FILE = r"file:///[^\s]*"

# Where an adapter's files are: file, PVC, HTTPS or S3, none with credentials in it.
AdapterSourceUriPattern = f"^({_FILE}|{_PVC}|{_HTTPS}|{_S3})$"

AdapterSourceUri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        pattern=f"^({_FILE}|{_PVC}|{_HTTPS}|{_S3})$",
        description=(
            "Where the adapter's files are: file:///path, pvc://<claim>/<path>, "
            "https://host/path or s3://<bucket>/<key>."
        ),
        json_schema_extra=validations(NO_TRAVERSAL),
    ),
]

# The same URI as the operator copies it into a WorkerPlacement: the LoRAAdapter it
# came from passed the traversal rule at admission, and a CEL rule here would cost
# too much across thousands of list items.
PlacedAdapterUri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        pattern=f"^({_FILE}|{_PVC}|{_HTTPS}|{_S3})$",
        description="Where the adapter's files are, copied from its LoRAAdapter or the catalog template.",
    ),
]

ModelSourceUri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        pattern=f"^({_PVC}|{_HTTPS}|{_S3}|/[^\\s]*)$",
        description=(
            "Where the base model's weights are: pvc://<claim>/<path>, https://host/path, "
            "s3://<bucket>/<key>, or an absolute path inside the worker image."
        ),
        json_schema_extra=validations(NO_TRAVERSAL),
    ),
]

DatasetUri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        pattern=f"^({_FILE}|{_PVC}|{_HTTPS}|{_S3})$",
        description="Where the training data is: file:///path, pvc://<claim>/<path>, https://... or s3://...",
        json_schema_extra=validations(NO_TRAVERSAL),
    ),
]

Quantity = Annotated[
    str,
    Field(
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$",
        description="A Kubernetes resource quantity, e.g. 4, 500m, 16Gi.",
    ),
]

# What a container that runs a model (vLLM, the trainer) requests when its spec names no cpu or memory.
DEFAULT_MODEL_CPU = "1"
DEFAULT_MODEL_MEMORY = "4Gi"

ResourceName = Annotated[
    str,
    Field(
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9._]*[a-z0-9])?$",
        description="Extended resource name of the accelerator, e.g. nvidia.com/gpu.",
    ),
]

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A condition shaped like metav1.Condition, so kubectl wait, Flux and Argo CD read it."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of the condition: Ready, Reconciling or Stalled.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Why the condition has its status: one CamelCase word, for tools to match on.",
    )
    message: str = Field(
        default="", max_length=32768, description="Why the condition has its status, for humans."
    )
    last_transition_time: datetime = Field(description="When the condition last changed status.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation of the object this condition was set from."
    )


class SecretReference(ApiModel):
    """A Secret in the same namespace."""

    name: ObjectName


class SecretKeyReference(ApiModel):
    """One key of a Secret in the same namespace."""

    name: ObjectName
    key: str = Field(
        default="api-key",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key of the Secret's data that holds the value.",
    )


class Toleration(ApiModel):
    """A pod toleration (core/v1 Toleration), refused here where a pod would refuse it."""

    key: str | None = Field(
        default=None,
        max_length=316,
        pattern=LABEL_KEY,
        description="Taint key the toleration applies to; empty with operator Exists matches every taint.",
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Equal: the taint's value must equal value; Exists: any value."
    )
    value: str | None = Field(
        default=None, max_length=63, pattern=LABEL_VALUE, description="Taint value to match (operator Equal)."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86400,
        description="How long the pod stays bound after a NoExecute taint appears (default: forever).",
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!(has(self.operator) && self.operator == 'Exists' && has(self.value) && self.value != '')",
                "value must be empty when operator is Exists",
                field_path=".value",
                reason="FieldValueInvalid",
            ),
            cel(
                "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                "operator must be Exists when key is empty (a toleration of every taint)",
                field_path=".operator",
                reason="FieldValueInvalid",
            ),
            cel(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds needs effect NoExecute",
                field_path=".tolerationSeconds",
                reason="FieldValueInvalid",
            ),
        )
    }


CONDITIONS_DESCRIPTION = (
    "Ready (always present), Reconciling (True while work is in flight) and Stalled (True on an "
    "error that needs a change to the spec), shaped like metav1.Condition."
)

CONDITIONS_FIELD_EXTRA: dict[str, Any] = {
    "description": CONDITIONS_DESCRIPTION,
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
