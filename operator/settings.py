"""The operator's settings: one typed object, read once from the environment at start."""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from loraplex import __version__

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator is configured with; see docs/operator.md for the variables."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace
    image: str = f"ghcr.io/loraplex/loraplex:{__version__}"
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
    trainer_priority_class: str = "loraplex-trainer"
    training_interval_seconds: float = 1.0
    training_max_attempts: int = 6  # attempts of a crashing trainer before the job fails
    scale_down_delay_seconds: float = 300.0  # how long fewer workers must do before the fleet shrinks
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OperatorSettings:
        """Settings from the LORAPLEX_* variables; a malformed value raises SettingsError naming it."""
        namespaces = tuple(n for n in environ.get("LORAPLEX_NAMESPACES", "").split(",") if n)
        identity = environ.get("POD_NAME") or socket.gethostname()

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
            trainer_priority_class=environ.get("LORAPLEX_TRAINER_PRIORITY_CLASS", cls.trainer_priority_class),
            training_interval_seconds=seconds("LORAPLEX_TRAINING_INTERVAL", cls.training_interval_seconds),
            training_max_attempts=integer("LORAPLEX_TRAINING_MAX_ATTEMPTS", cls.training_max_attempts),
            scale_down_delay_seconds=seconds("LORAPLEX_SCALE_DOWN_DELAY", cls.scale_down_delay_seconds),
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


def default_priority(identity: str) -> int:
    """A peering priority derived from the replica's name.

    kopf freezes every replica when two share a priority, so replicas must
    differ; a stable hash of the pod name gives each its own.
    """
    return 1 + zlib.crc32(identity.encode()) % 1_000_000
