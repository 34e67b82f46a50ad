"""The router Deployment carries the BaseModel's quotas and the number of router replicas sharing them."""

from __future__ import annotations

from typing import Any

from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.fleet import BaseModelRef, router_deployment
from loraplex.operator.settings import OperatorSettings
from loraplex.router.quota import QuotaLimiter
from loraplex.router.settings import RouterSettings

REF = BaseModelRef("llama-8b", "serving", "uid-1")
QUOTAS = {
    "perPrincipal": {"requestsPerMinute": 60, "tokensPerMinute": 10000},
    "perAdapter": {"requestsPerMinute": 600},
    "principals": [{"subject": "batch-job", "tokensPerMinute": 90000}],
}


def router_env(settings: OperatorSettings, **spec: Any) -> dict[str, str]:
    model = BaseModelSpec.model_validate({"model": {"uri": "pvc://models/llama/8b"}, **spec})
    container = router_deployment(REF, model, settings)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_the_router_reads_back_the_quotas_and_its_share_of_them() -> None:
    env = router_env(OperatorSettings(image="loraplex:test", router_replicas=3), quotas=QUOTAS)
    assert env["LORAPLEX_ROUTER_REPLICAS"] == "3"
    settings = RouterSettings.from_env(env, base_model="llama-8b")
    assert settings.quotas is not None
    assert settings.replicas == 3
    limits = {
        (lim.scope, lim.budget): lim
        for lim in QuotaLimiter(settings.quotas, settings.replicas).limits_for("alice", "sql")
    }
    assert {key: (lim.configured, lim.share) for key, lim in limits.items()} == {
        ("principal", "requests"): (60, 20),
        ("principal", "tokens"): (10000, 3334),
        ("adapter", "requests"): (600, 200),
    }
    assert settings.quotas.principal_limits("batch-job").tokens_per_minute == 90000  # type: ignore[union-attr]


def test_without_quotas_the_router_is_given_none() -> None:
    env = router_env(OperatorSettings(image="loraplex:test", router_replicas=3))
    assert "LORAPLEX_ROUTER_QUOTAS" not in env
    assert RouterSettings.from_env(env, base_model="llama-8b").quotas is None
