"""The operator's settings: one typed object, read once from the environment at start."""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from loraplex.api.release import __version__
from loraplex.operator.training_roots import RootError, parse_roots

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class ContainerResources:
    """CPU and memory requests and the memory limit of one kind of container (Kubernetes quantities)."""

    cpu_request: str
    memory_request: str
    memory_limit: str

    def manifest(self) -> dict[str, dict[str, str]]:
        """The container's `resources`."""
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"memory": self.memory_limit},
        }


LabelSelector = Mapping[str, Any]


@dataclass(frozen=True)
class MetricsScraper:
    """The pods (in the namespaces) that may reach the workers' metrics ports: Prometheus."""

    namespace_selector: LabelSelector = field(default_factory=dict)  # empty: every namespace
    pod_selector: LabelSelector = field(
        default_factory=lambda: {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    )


@dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator is configured with; see docs/operator.md for the variables."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace
    image: str = f"ghcr.io/loraplex/loraplex:{__version__}"
    trainer_image: str = f"ghcr.io/loraplex/loraplex-trainer:{__version__}"
    metrics_port: int = 9090
    health_port: int = 8081
    peering_name: str = "loraplex"
    peering_priority: int = 0
    peering_lifetime_seconds: int = 20  # how long a replica that died unannounced still blocks others
    router_replicas: int = 1
    status_interval_seconds: float = 2.0
    placement_interval_seconds: float = 1.0
    max_rebalance_moves: int = 64
    disk_slots: int = 1024
    status_writers: int = 8
    field_manager: str = "loraplex-operator"
    training_store: str = "pvc://loraplex-store"  # where checkpoints and trained adapters go
    # Where TrainingJobs may read datasets from (URI prefixes; see training_roots).
    training_dataset_roots: tuple[str, ...] = ("pvc://loraplex-store/datasets",)
    trainer_priority_class: str = "loraplex-trainer"
    training_interval_seconds: float = 1.0
    training_max_attempts: int = 6  # attempts of a crashing trainer before the job fails
    # Warm trainers (shared TrainingJobs, training_tenancy): tenants per trainer, their summed LoRA
    # rank, and how long a trainer with no tenant stays hot before it exits.
    training_max_tenants: int = 8
    training_max_rank_sum: int = 256
    training_idle_seconds: float = 300.0
    scale_down_delay_seconds: float = 300.0  # how long fewer workers must do before the fleet shrinks
    # What the containers the operator adds beside the model request (vLLM's and the trainer's come
    # from the BaseModel and TrainingJob specs).
    agent_resources: ContainerResources = ContainerResources("100m", "256Mi", "1Gi")
    router_resources: ContainerResources = ContainerResources("200m", "256Mi", "1Gi")
    fetch_model_resources: ContainerResources = ContainerResources("100m", "256Mi", "2Gi")
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    # Who each BaseModel's NetworkPolicy lets reach the agents' and vLLM's metrics ports (default:
    # kube-prometheus-stack's Prometheus, in any namespace); None lets no scraper in.
    metrics_scraper: MetricsScraper | None = field(default_factory=MetricsScraper)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OperatorSettings:
        """Settings from the LORAPLEX_* variables; a malformed value raises SettingsError naming it."""
        namespaces = tuple(n for n in environ.get("LORAPLEX_NAMESPACES", "").split(",") if n)
        identity = environ.get("POD_NAME") or os.uname().nodename

        def integer(name: str, default: int, minimum: int | None = None) -> int:
            return _number(environ, name, default, int, minimum)

        def seconds(name: str, default: float, minimum: float | None = None) -> float:
            return _number(environ, name, default, float, minimum)

        return cls(
            namespaces=namespaces,
            image=environ.get("LORAPLEX_IMAGE", cls.image),
            metrics_port=integer("LORAPLEX_METRICS_PORT", cls.metrics_port),
            health_port=integer("LORAPLEX_HEALTH_PORT", cls.health_port),
            peering_name=environ.get("LORAPLEX_PEERING_NAME", cls.peering_name),
            peering_priority=integer("LORAPLEX_PEERING_PRIORITY", default_priority(identity)),
            peering_lifetime_seconds=integer(
                "LORAPLEX_PEERING_LIFETIME", cls.peering_lifetime_seconds, minimum=10
            ),
            router_replicas=integer("LORAPLEX_ROUTER_REPLICAS", cls.router_replicas),
            status_interval_seconds=seconds("LORAPLEX_STATUS_INTERVAL", cls.status_interval_seconds),
            placement_interval_seconds=seconds(
                "LORAPLEX_PLACEMENT_INTERVAL", cls.placement_interval_seconds, minimum=0.01
            ),
            max_rebalance_moves=integer("LORAPLEX_MAX_REBALANCE_MOVES", cls.max_rebalance_moves, minimum=0),
            disk_slots=integer("LORAPLEX_DISK_SLOTS", cls.disk_slots, minimum=0),
            status_writers=integer("LORAPLEX_STATUS_WRITERS", cls.status_writers, minimum=1),
            training_store=environ.get("LORAPLEX_TRAINING_STORE", cls.training_store),
            training_dataset_roots=_dataset_roots(environ, cls.training_dataset_roots),
            trainer_priority_class=environ.get("LORAPLEX_TRAINER_PRIORITY_CLASS", cls.trainer_priority_class),
            training_interval_seconds=seconds("LORAPLEX_TRAINING_INTERVAL", cls.training_interval_seconds),
            training_max_attempts=integer("LORAPLEX_TRAINING_MAX_ATTEMPTS", cls.training_max_attempts),
            training_max_tenants=integer(
                "LORAPLEX_TRAINING_MAX_TENANTS", cls.training_max_tenants, minimum=1
            ),
            training_max_rank_sum=integer(
                "LORAPLEX_TRAINING_MAX_RANK_SUM", cls.training_max_rank_sum, minimum=1
            ),
            training_idle_seconds=seconds(
                "LORAPLEX_TRAINING_IDLE_SECONDS", cls.training_idle_seconds, minimum=0
            ),
            scale_down_delay_seconds=seconds("LORAPLEX_SCALE_DOWN_DELAY", cls.scale_down_delay_seconds),
            trainer_image=environ.get("LORAPLEX_TRAINER_IMAGE", cls.trainer_image),
            agent_resources=_resources(environ, "AGENT", cls.agent_resources),
            router_resources=_resources(environ, "ROUTER", cls.router_resources),
            fetch_model_resources=_resources(environ, "FETCH_MODEL", cls.fetch_model_resources),
            metrics_scraper=_metrics_scraper(environ),
        )


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot start with."""


def _number(environ: Mapping[str, str], name: str, default: N, kind: type[N], minimum: N | None) -> N:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SettingsError(f"{name}={raw!r} is not {what}") from None
    if minimum is not None and not value >= minimum:  # `not >=` also refuses NaN
        raise SettingsError(f"{name}={raw!r} is below the least allowed value, {minimum}")
    return value


def _dataset_roots(environ: Mapping[str, str], default: tuple[str, ...]) -> tuple[str, ...]:
    """LORAPLEX_TRAINING_DATASET_ROOTS: comma-separated URI prefixes (empty: no dataset is allowed)."""
    raw = environ.get("LORAPLEX_TRAINING_DATASET_ROOTS")
    if raw is None:
        return default
    roots = tuple(root.strip() for root in raw.split(",") if root.strip())
    try:
        parse_roots(roots)
    except RootError as error:
        raise SettingsError(f"LORAPLEX_TRAINING_DATASET_ROOTS: {error}") from None
    return roots


# A Kubernetes quantity as the API models accept one (loraplex.api.common.Quantity), and its suffixes.
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")
_SUFFIXES = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_SUFFIXES |= {f"{p}i": 1024.0 ** (i + 1) for i, p in enumerate("KMGTP")}


def _quantity(environ: Mapping[str, str], name: str, default: str) -> tuple[str, float]:
    raw = environ.get(name, default)
    match = _QUANTITY.match(raw)
    if match is None:
        raise SettingsError(f"{name}={raw!r} is not a Kubernetes quantity (e.g. 500m, 256Mi, 2Gi)")
    number, suffix = match.groups()
    return raw, float(number) * _SUFFIXES.get(suffix or "", 1.0)


def _resources(environ: Mapping[str, str], container: str, default: ContainerResources) -> ContainerResources:
    """LORAPLEX_<CONTAINER>_CPU_REQUEST, _MEMORY_REQUEST and _MEMORY_LIMIT over the defaults."""
    prefix = f"LORAPLEX_{container}_"
    cpu, _ = _quantity(environ, prefix + "CPU_REQUEST", default.cpu_request)
    memory, memory_bytes = _quantity(environ, prefix + "MEMORY_REQUEST", default.memory_request)
    limit, limit_bytes = _quantity(environ, prefix + "MEMORY_LIMIT", default.memory_limit)
    if memory_bytes > limit_bytes:
        raise SettingsError(
            f"{prefix}MEMORY_REQUEST={memory!r} is above {prefix}MEMORY_LIMIT={limit!r}: "
            "Kubernetes refuses a request above its limit"
        )
    return ContainerResources(cpu, memory, limit)


def _metrics_scraper(environ: Mapping[str, str]) -> MetricsScraper | None:
    """LORAPLEX_METRICS_SCRAPER ("false" lets none in) and its two selectors, each a JSON LabelSelector."""
    allowed = environ.get("LORAPLEX_METRICS_SCRAPER", "true").lower()
    if allowed not in ("true", "false"):
        raise SettingsError(f"LORAPLEX_METRICS_SCRAPER={allowed!r} is neither true nor false")
    if allowed == "false":
        return None
    default = MetricsScraper()
    return MetricsScraper(
        namespace_selector=_label_selector(
            environ, "LORAPLEX_METRICS_SCRAPER_NAMESPACE_SELECTOR", default.namespace_selector
        ),
        pod_selector=_label_selector(environ, "LORAPLEX_METRICS_SCRAPER_POD_SELECTOR", default.pod_selector),
    )


def _label_selector(environ: Mapping[str, str], name: str, default: LabelSelector) -> LabelSelector:
    """A Kubernetes LabelSelector ({"matchLabels": {...}, "matchExpressions": [...]}) as JSON."""
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        value = json.loads(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not JSON") from None
    if not isinstance(value, dict) or not set(value) <= {"matchLabels", "matchExpressions"}:
        raise SettingsError(f"{name}={raw!r} is not a LabelSelector (matchLabels, matchExpressions)")
    labels, expressions = value.get("matchLabels", {}), value.get("matchExpressions", [])
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise SettingsError(f"{name}={raw!r}: matchLabels must map label names to strings")
    if not isinstance(expressions, list) or not all(
        isinstance(e, dict) and isinstance(e.get("key"), str) and e.get("operator") in _SELECTOR_OPERATORS
        for e in expressions
    ):
        raise SettingsError(
            f"{name}={raw!r}: each matchExpression needs a key and an operator {_SELECTOR_OPERATORS}"
        )
    return value


_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def default_priority(identity: str) -> int:
    """A peering priority derived from the replica's name.

    kopf freezes every replica when two share a priority, so replicas must
    differ; a stable hash of the pod name gives each its own.
    """
    return 1 + zlib.crc32(identity.encode()) % 1_000_000
