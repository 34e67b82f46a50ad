"""BaseModel: one base LLM served by a fleet of identical GPU workers.

Every worker runs vLLM with multi-LoRA on and the loraplex agent beside it;
adapters of this base model are placed onto those workers.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from loraplex.api.access import BaseModelAccess
from loraplex.api.common import (
    CONDITIONS_FIELD_EXTRA,
    DEFAULT_MODEL_CPU,
    DEFAULT_MODEL_MEMORY,
    IMAGE_REFERENCE,
    LABEL_VALUE,
    NO_TRAVERSAL,
    AdapterSourceUriPattern,
    ApiModel,
    Condition,
    ModelSourceUri,
    ObjectName,
    Quantity,
    ResourceName,
    SecretKeyReference,
    SecretReference,
    Toleration,
    cel,
    validations,
)
from loraplex.api.engine_version import DEFAULT_ENGINE_IMAGE

# Ranks vLLM accepts for --max-lora-rank.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)

# vLLM flags the operator sets from the spec (or must not be set at all: a static LoRA module
# bypasses the agent, an API key of the user's own would lock the agent and the router out).
# `engine.args` may not set them, in either spelling (dashes or underscores, `--flag=value` too).
MANAGED_ENGINE_FLAGS = (
    "model", "served-model-name", "host", "port", "enable-lora", "max-loras", "max-cpu-loras",
    "max-lora-rank", "tensor-parallel-size", "tp", "max-model-len", "api-key", "lora-modules",
)  # fmt: skip
MANAGED_FLAG = "^--?(" + "|".join(f.replace("-", "[-_]") for f in MANAGED_ENGINE_FLAGS) + ")(=.*)?$"

EngineArg = Annotated[
    str,
    Field(
        max_length=1024,
        json_schema_extra=validations(
            cel(
                f"!self.matches('{MANAGED_FLAG}')",
                "must not set a vLLM flag the operator manages (set the engine fields instead)",
                reason="FieldValueForbidden",
                message_expression=(
                    "'must not set ' + self + ', a vLLM flag the operator manages "
                    "(set the engine fields instead)'"
                ),
            )
        ),
    ),
]


class ModelSource(ApiModel):
    """Where the base model's weights come from and the name it is served under."""

    uri: ModelSourceUri
    served_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$",
        description="Model name clients use for the base model (default: the BaseModel's name).",
    )


class EngineSettings(ApiModel):
    """vLLM settings shared by every worker of this base model."""

    image: str = Field(
        default=DEFAULT_ENGINE_IMAGE,
        min_length=1,
        max_length=512,
        pattern=IMAGE_REFERENCE,
        description=(
            "Image of the workers' vllm container (vLLM's OpenAI server); it must run as a non-root user "
            "(uid 65532). The default is vLLM's official image of the version loraplex is tested with."
        ),
    )
    args: list[EngineArg] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Extra command-line flags passed to vLLM as they are; not the flags the operator manages "
            "(--max-loras, --api-key, --port, ...: set the engine fields instead)."
        ),
    )
    max_loras: int = Field(
        default=4, ge=1, le=256, description="GPU adapter slots per worker (vLLM --max-loras)."
    )
    max_cpu_loras: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="Adapters vLLM keeps in CPU memory per worker (--max-cpu-loras); at least maxLoras.",
    )
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256, 320, 512] = Field(
        default=16,
        description="Largest adapter rank the workers accept (--max-lora-rank).",
    )
    tensor_parallel_size: int = Field(
        default=1, ge=1, le=16, description="GPUs one worker shards the model over."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=1048576, description="Context length (--max-model-len)."
    )
    api_key_secret_ref: SecretKeyReference | None = Field(
        default=None,
        description=(
            "Secret key holding the API key vLLM requires; only the agent and the router get it. "
            "When omitted the operator creates one."
        ),
    )
    shm_size: Quantity = Field(
        default="2Gi",
        description=(
            "Size of the in-memory /dev/shm vLLM gets (tensor-parallel workers share tensors through it); "
            "it counts against the worker's memory."
        ),
    )


class WorkerResources(ApiModel):
    """What one worker pod requests."""

    gpu: int = Field(default=1, ge=1, le=16, description="Accelerators per worker.")
    gpu_resource_name: ResourceName = "nvidia.com/gpu"
    cpu: Quantity | None = Field(
        default=None, description=f"CPU vLLM requests (default: {DEFAULT_MODEL_CPU})."
    )
    memory: Quantity | None = Field(
        default=None,
        description=(
            f"Memory vLLM requests and is limited to (default: a {DEFAULT_MODEL_MEMORY} request, no limit)."
        ),
    )


class ReplicaRange(ApiModel):
    """How many workers the fleet runs."""

    min: int = Field(
        default=1, ge=0, le=1000, description="Workers the fleet always runs (kubectl scale sets this)."
    )
    max: int | None = Field(default=None, ge=1, le=1000, description="Upper bound (default: min).")
    target_requests_per_worker: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description=(
            "Scale on request load: run enough workers, between min and max, that the requests "
            "running or waiting in their vLLMs (a one-minute mean, as the agents report it) come to "
            "at most this many per worker; fewer once the load has stayed lower for the operator's "
            "scale-down delay. Unset: the fleet is sized by its adapters alone (and by kubectl scale "
            "or an HPA through min)."
        ),
    )

    @property
    def effective_max(self) -> int:
        return self.min if self.max is None else self.max


class AdapterCatalog(ApiModel):
    """Where the long tail of adapters (those without a LoRAAdapter object) is found."""

    uri_template: str = Field(
        min_length=1,
        max_length=2048,
        pattern=AdapterSourceUriPattern,
        description=(
            "URI of an adapter by name, with '{adapter}' where the requested name goes, "
            "e.g. s3://adapters/users/{adapter}/. Like every URI field: no credentials in it "
            "(adapterStoreSecretRef holds them)."
        ),
        json_schema_extra=validations(
            NO_TRAVERSAL,
            cel("self.contains('{adapter}')", "must contain the placeholder '{adapter}'"),
        ),
    )
    max_rank: int | None = Field(
        default=None, ge=1, le=512, description="Refuse catalog adapters above this rank."
    )


class QuotaLimits(ApiModel):
    """Budgets per minute; a budget left out is unlimited."""

    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Requests admitted per minute (a sliding window); more get 429 with Retry-After.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000_000,
        description=(
            "Tokens (prompt and completion, as vLLM counts them in `usage`) per minute (a sliding "
            "window). A request is admitted while some budget is left and charged its real tokens "
            "when it ends; once the budget is spent requests get 429 with Retry-After."
        ),
    )


class PrincipalQuota(QuotaLimits):
    """The budgets of one principal, in place of quotas.perPrincipal."""

    subject: str = Field(
        min_length=1,
        max_length=256,
        description="The principal's subject (an API key's subject or a token's `sub`).",
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.requestsPerMinute) || has(self.tokensPerMinute)",
                "must set requestsPerMinute or tokensPerMinute",
                reason="FieldValueRequired",
            )
        )
    }


class AdapterQuota(QuotaLimits):
    """The budgets of one adapter (or the base model), in place of quotas.perAdapter."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$",
        description="The adapter's name as clients give it in `model` (the base model's served name too).",
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.requestsPerMinute) || has(self.tokensPerMinute)",
                "must set requestsPerMinute or tokensPerMinute",
                reason="FieldValueRequired",
            )
        )
    }


class Quotas(ApiModel):
    """Rate limits the router enforces: per principal (the caller) and per adapter (the model asked for).

    Each router replica enforces ceil(limit / replicas) of every budget, so the replicas together
    admit at most the limit (docs/router.md, Quotas)."""

    per_principal: QuotaLimits | None = Field(
        default=None, description="Budgets of every principal, unless `principals` names it."
    )
    per_adapter: QuotaLimits | None = Field(
        default=None,
        description="Budgets of every adapter (and the base model), unless `adapters` names it.",
    )
    principals: list[PrincipalQuota] = Field(
        default_factory=list,
        max_length=1000,
        description="Budgets of named principals, in place of perPrincipal.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["subject"]},
    )
    adapters: list[AdapterQuota] = Field(
        default_factory=list,
        max_length=1000,
        description="Budgets of named adapters, in place of perAdapter.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    def principal_limits(self, subject: str) -> QuotaLimits | None:
        """The budgets that apply to a principal: its own entry, else perPrincipal."""
        return next((p for p in self.principals if p.subject == subject), self.per_principal)

    def adapter_limits(self, name: str) -> QuotaLimits | None:
        """The budgets that apply to an adapter (or the base model): its own entry, else perAdapter."""
        return next((a for a in self.adapters if a.name == name), self.per_adapter)


class BaseModelSpec(ApiModel):
    """Desired state of a BaseModel."""

    model: ModelSource
    engine: EngineSettings = Field(default_factory=EngineSettings)
    resources: WorkerResources = Field(default_factory=WorkerResources)
    replicas: ReplicaRange = Field(default_factory=ReplicaRange)
    node_selector: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] = Field(
        default_factory=dict, max_length=32, description="Node labels a worker pod's node must have."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Taints the worker pods tolerate."
    )
    image_pull_secrets: list[SecretReference] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Secrets in this namespace (type kubernetes.io/dockerconfigjson) that the pods the operator "
            "runs for this base model (workers, router, trainers) pull their images with."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    adapter_catalog: AdapterCatalog | None = None
    adapter_volumes: list[ObjectName] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "PersistentVolumeClaims that hold adapters (pvc://<claim>/... sources), mounted read-only "
            "into each worker's agent. A pvc:// adapter catalog's claim is mounted without being listed."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    adapter_store_secret_ref: SecretReference | None = Field(
        default=None,
        description="Secret with credentials for the adapter store (S3 keys, HTTP token).",
    )
    quotas: Quotas | None = Field(
        default=None,
        description="Requests and tokens per minute per principal and per adapter, enforced by the router.",
    )
    access: BaseModelAccess | None = Field(
        default=None,
        description=(
            "Who may call the router and use the base model and the catalog's adapters (docs/security.md). "
            "Omitted: the router authenticates no one (a local fleet only)."
        ),
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.replicas.max) || self.replicas.max >= self.replicas.min",
                "replicas.max must be at least replicas.min",
                field_path=".replicas.max",
                reason="FieldValueInvalid",
            ),
            cel(
                "self.engine.maxCpuLoras >= self.engine.maxLoras",
                "engine.maxCpuLoras must be at least engine.maxLoras "
                "(vLLM keeps every GPU adapter in CPU too)",
                field_path=".engine.maxCpuLoras",
                reason="FieldValueInvalid",
            ),
            cel(
                "self.resources.gpu % self.engine.tensorParallelSize == 0",
                "resources.gpu must be a multiple of engine.tensorParallelSize",
                field_path=".resources.gpu",
                reason="FieldValueInvalid",
            ),
        )
    }


class SlotUsage(ApiModel):
    """Adapter slots across the fleet, per tier."""

    gpu_total: int = Field(default=0, ge=0, description="GPU adapter slots of all ready workers.")
    gpu_used: int = Field(default=0, ge=0, description="GPU adapter slots holding an adapter.")
    cpu_total: int = Field(default=0, ge=0, description="CPU-cache adapter slots of all ready workers.")
    cpu_used: int = Field(default=0, ge=0, description="CPU-cache adapter slots holding an adapter.")


class BaseModelStatus(ApiModel):
    """Observed state of a BaseModel."""

    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation the operator last acted on; Ready speaks for that generation.",
    )
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_FIELD_EXTRA)
    desired_workers: int | None = Field(
        default=None, ge=0, description="Workers the fleet should run now (between replicas.min and max)."
    )
    ready_workers: int | None = Field(default=None, ge=0, description="Workers whose engine is ready.")
    workers: str | None = Field(
        default=None, max_length=32, description="Ready / desired workers, for humans."
    )
    slots: SlotUsage | None = None
    slots_summary: str | None = Field(
        default=None, max_length=32, description="GPU slots used / total, for humans."
    )
    worker_selector: str | None = Field(
        default=None, max_length=256, description="Label selector of the worker pods (for kubectl scale)."
    )
    requests: float | None = Field(
        default=None,
        ge=0,
        description="Requests running or waiting on the workers, as their agents report them: what "
        "replicas.targetRequestsPerWorker sizes the fleet by (set only with it).",
    )
