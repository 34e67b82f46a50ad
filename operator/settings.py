"""The operator's settings: one typed object, read once from the environment at start."""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from loraplex import __version__


@dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator is configured with; see docs/operator.md for the variables."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace
    image: str = f"ghcr.io/loraplex/loraplex:{__version__}"
    metrics_port: int = 9090
    health_port: int = 8081
    peering_name: str = "loraplex"
    peering_priority: int = 0
    router_replicas: int = 1
    status_interval_seconds: float = 2.0
    placement_interval_seconds: float = 1.0
    max_rebalance_moves: int = 64
    disk_slots: int = 1024
    status_writers: int = 8
    field_manager: str = "loraplex-operator"
    training_store: str = "pvc://loraplex-store"  # where checkpoints and trained adapters go
    trainer_priority_class: str = "loraplex-trainer"
    training_interval_seconds: float = 1.0
    training_max_attempts: int = 6  # attempts of a crashing trainer before the job fails
    scale_down_delay_seconds: float = 300.0  # how long fewer workers must do before the fleet shrinks
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OperatorSettings:
        namespaces = tuple(n for n in environ.get("LORAPLEX_NAMESPACES", "").split(",") if n)
        identity = environ.get("POD_NAME") or socket.gethostname()
        return cls(
            namespaces=namespaces,
            image=environ.get("LORAPLEX_IMAGE", cls.image),
            metrics_port=int(environ.get("LORAPLEX_METRICS_PORT", cls.metrics_port)),
            health_port=int(environ.get("LORAPLEX_HEALTH_PORT", cls.health_port)),
            peering_name=environ.get("LORAPLEX_PEERING_NAME", cls.peering_name),
            peering_priority=int(environ.get("LORAPLEX_PEERING_PRIORITY", default_priority(identity))),
            router_replicas=int(environ.get("LORAPLEX_ROUTER_REPLICAS", cls.router_replicas)),
            status_interval_seconds=float(
                environ.get("LORAPLEX_STATUS_INTERVAL", cls.status_interval_seconds)
            ),
            training_store=environ.get("LORAPLEX_TRAINING_STORE", cls.training_store),
            trainer_priority_class=environ.get("LORAPLEX_TRAINER_PRIORITY_CLASS", cls.trainer_priority_class),
            training_interval_seconds=float(
                environ.get("LORAPLEX_TRAINING_INTERVAL", cls.training_interval_seconds)
            ),
            training_max_attempts=int(
                environ.get("LORAPLEX_TRAINING_MAX_ATTEMPTS", cls.training_max_attempts)
            ),
            scale_down_delay_seconds=float(
                environ.get("LORAPLEX_SCALE_DOWN_DELAY", cls.scale_down_delay_seconds)
            ),
        )


def default_priority(identity: str) -> int:
    """A peering priority derived from the replica's name.

    kopf freezes every replica when two share a priority, so replicas must
    differ; a stable hash of the pod name gives each its own.
    """
    return 1 + zlib.crc32(identity.encode()) % 1_000_000
