"""The router's settings: one typed object, read once at start from flags and LORAPLEX_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from loraplex.api.access import RouterAccess
from loraplex.api.basemodel import Quotas
from loraplex.router.decision import RoutingConfig
from loraplex.router.oidc import OidcSettings

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
    # Authentication (docs/router.md): neither set means every caller is anonymous.
    api_key_dirs: tuple[Path, ...] = ()
    api_keys_reload_seconds: float = 2.0
    oidc: OidcSettings | None = None
    # Authorization: the base model's and the catalog's access (and, in static mode, adapters').
    access: RouterAccess = field(default_factory=RouterAccess)
    # Quotas (docs/router.md): the BaseModel's spec.quotas, each replica enforcing its share.
    quotas: Quotas | None = None
    replicas: int = 1
    principal_labels: int = 50
    adapter_labels: int = 100  # named adapters with series of their own at a time (the rest: _other)

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

        def derived(name: str) -> float | None:  # unset or empty: derived from the fleet
            return float(environ[name]) if environ.get(name) else None

        max_spread = derived("LORAPLEX_ROUTER_MAX_SPREAD")
        routing = RoutingConfig(
            epsilon=number("LORAPLEX_ROUTER_EPSILON", RoutingConfig.epsilon),
            max_spread=None if max_spread is None else int(max_spread),
            hot_rate=derived("LORAPLEX_ROUTER_HOT_RATE"),
            half_life=number("LORAPLEX_ROUTER_RATE_HALF_LIFE", RoutingConfig.half_life),
            miss_candidates=int(number("LORAPLEX_ROUTER_MISS_CANDIDATES", RoutingConfig.miss_candidates)),
            first_candidates=int(number("LORAPLEX_ROUTER_FIRST_CANDIDATES", RoutingConfig.first_candidates)),
            max_num_seqs=int(number("LORAPLEX_ROUTER_MAX_NUM_SEQS", RoutingConfig.max_num_seqs)),
            policy=routing_policy(environ.get("LORAPLEX_ROUTER_POLICY", RoutingConfig.policy)),
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
            "api_keys_reload_seconds": number("LORAPLEX_ROUTER_API_KEYS_RELOAD", cls.api_keys_reload_seconds),
        }
        if access := environ.get("LORAPLEX_ROUTER_ACCESS"):
            settings["access"] = RouterAccess.model_validate_json(access)
        if quotas := environ.get("LORAPLEX_ROUTER_QUOTAS"):
            settings["quotas"] = Quotas.model_validate_json(quotas)
        settings["replicas"] = max(1, int(number("LORAPLEX_ROUTER_REPLICAS", cls.replicas)))
        settings["principal_labels"] = int(number("LORAPLEX_ROUTER_PRINCIPAL_LABELS", cls.principal_labels))
        settings["adapter_labels"] = int(number("LORAPLEX_ROUTER_ADAPTER_LABELS", cls.adapter_labels))
        settings.update({k: v for k, v in values.items() if v is not None})
        return cls(**settings)


def load_access_file(path: Path) -> RouterAccess:
    """Static mode's access rules: YAML of {baseModel, catalog, adapters: {name: {subjects, groups}}}."""
    return RouterAccess.model_validate(yaml.safe_load(path.read_text()) or {})


def routing_policy(text: str) -> Literal["affinity", "round_robin"]:
    """LORAPLEX_ROUTER_POLICY: `affinity` (the router's policy) or `round_robin` (a benchmark's baseline)."""
    if text == "affinity":
        return "affinity"
    if text == "round_robin":
        return "round_robin"
    raise ValueError(f"LORAPLEX_ROUTER_POLICY is affinity or round_robin; got {text!r}")


def parse_workers(items: Sequence[str]) -> tuple[StaticWorker, ...]:
    return tuple(StaticWorker.parse(item) for item in items)
