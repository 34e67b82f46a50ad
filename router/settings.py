"""The router's settings: one typed object, read once at start from flags and LORAPLEX_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraplex.router.decision import RoutingConfig

MIB = 1 << 20


@dataclass(frozen=True)
class StaticWorker:
    """A worker given on the command line or in a file (static mode): its vLLM and agent URLs."""

    name: str
    vllm_url: str
    agent_url: str

    @classmethod
    def parse(cls, text: str) -> StaticWorker:
        """`name=vllm_url,agent_url`, e.g. `w0=http://127.0.0.1:8000,http://127.0.0.1:8080`."""
        name, sep, urls = text.partition("=")
        vllm_url, comma, agent_url = urls.partition(",")
        if not (name and sep and vllm_url and comma and agent_url):
            raise ValueError(f"a worker is name=vllm_url,agent_url; got {text!r}")
        return cls(name, vllm_url.rstrip("/"), agent_url.rstrip("/"))


def load_workers_file(path: Path) -> tuple[StaticWorker, ...]:
    """A YAML list of {name, vllmUrl, agentUrl}."""
    data: Any = yaml.safe_load(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{name, vllmUrl, agentUrl}}")
    workers = []
    for item in data:
        if not isinstance(item, dict) or not {"name", "vllmUrl", "agentUrl"} <= item.keys():
            raise ValueError(f"{path}: every worker needs name, vllmUrl and agentUrl; got {item!r}")
        workers.append(
            StaticWorker(
                str(item["name"]), str(item["vllmUrl"]).rstrip("/"), str(item["agentUrl"]).rstrip("/")
            )
        )
    return tuple(workers)


@dataclass(frozen=True)
class RouterSettings:
    """Everything the router is configured with; docs/router.md lists the variables."""

    base_model: str
    served_model_name: str = ""  # the name clients use for the base model (default: base_model)
    namespace: str | None = None
    static_workers: tuple[StaticWorker, ...] = ()
    host: str = "0.0.0.0"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = 4 * MIB
    load_interval_seconds: float = 0.5
    residency_interval_seconds: float = 1.0
    stale_after_seconds: float = 2.0
    connect_timeout_seconds: float = 2.0
    ensure_timeout_seconds: float = 300.0
    read_timeout_seconds: float = 600.0
    vllm_port: int = 8000
    agent_port: int = 8080
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    @property
    def base_name(self) -> str:
        return self.served_model_name or self.base_model

    @property
    def static(self) -> bool:
        return bool(self.static_workers)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **values: Any) -> RouterSettings:
        """Settings from LORAPLEX_* variables, with `values` (the command's flags) taking precedence."""

        def number(name: str, default: float) -> float:
            return float(environ.get(name, default))

        routing = RoutingConfig(
            epsilon=number("LORAPLEX_ROUTER_EPSILON", RoutingConfig.epsilon),
            max_spread=int(number("LORAPLEX_ROUTER_MAX_SPREAD", RoutingConfig.max_spread)),
            hot_rate=number("LORAPLEX_ROUTER_HOT_RATE", RoutingConfig.hot_rate),
            half_life=number("LORAPLEX_ROUTER_RATE_HALF_LIFE", RoutingConfig.half_life),
            miss_candidates=int(number("LORAPLEX_ROUTER_MISS_CANDIDATES", RoutingConfig.miss_candidates)),
            first_candidates=int(number("LORAPLEX_ROUTER_FIRST_CANDIDATES", RoutingConfig.first_candidates)),
        )
        settings: dict[str, Any] = {
            "api_key": environ.get("LORAPLEX_VLLM_API_KEY") or None,
            "max_body_bytes": int(number("LORAPLEX_ROUTER_MAX_BODY_BYTES", cls.max_body_bytes)),
            "load_interval_seconds": number("LORAPLEX_ROUTER_LOAD_INTERVAL", cls.load_interval_seconds),
            "residency_interval_seconds": number(
                "LORAPLEX_ROUTER_RESIDENCY_INTERVAL", cls.residency_interval_seconds
            ),
            "stale_after_seconds": number("LORAPLEX_ROUTER_STALE_AFTER", cls.stale_after_seconds),
            "connect_timeout_seconds": number("LORAPLEX_ROUTER_CONNECT_TIMEOUT", cls.connect_timeout_seconds),
            "ensure_timeout_seconds": number("LORAPLEX_ROUTER_ENSURE_TIMEOUT", cls.ensure_timeout_seconds),
            "read_timeout_seconds": number("LORAPLEX_ROUTER_READ_TIMEOUT", cls.read_timeout_seconds),
            "routing": routing,
        }
        settings.update({k: v for k, v in values.items() if v is not None})
        return cls(**settings)


def parse_workers(items: Sequence[str]) -> tuple[StaticWorker, ...]:
    return tuple(StaticWorker.parse(item) for item in items)
