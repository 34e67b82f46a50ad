"""The routing defaults: derived from the fleet, the same in the benchmark as in `loraplex router`,
and documented as the code has them."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from types import ModuleType

import pytest

from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.fleet import BaseModelRef, router_deployment
from loraplex.operator.settings import OperatorSettings
from loraplex.router import main as router_main
from loraplex.router.decision import RANKING_DEPTH, Router, RoutingConfig
from loraplex.router.rendezvous import Rendezvous
from loraplex.router.settings import RouterSettings
from loraplex.router.table import WorkerTable

REPO = Path(__file__).resolve().parents[2]


def test_the_benchmark_routes_with_what_loraplex_router_runs_when_given_no_settings(
    monkeypatch: pytest.MonkeyPatch, routing_bench: ModuleType
) -> None:
    import os

    for name in [name for name in os.environ if name.startswith("LORAPLEX_")]:
        monkeypatch.delenv(name)
    parser = argparse.ArgumentParser()
    router_main.configure(parser)
    args = parser.parse_args(["--base-model", "m", "--workers", "w=http://a:1,http://a:2"])
    shipped = router_main.settings_from_args(args).routing
    bench = routing_bench
    assert bench.shipped_routing() == shipped
    workload = bench.workloads(quick=True)[0]
    _sim, choose = bench.loraplex_policy(workload, seed=1)
    routers = [
        cell.cell_contents for cell in choose.__closure__ or () if isinstance(cell.cell_contents, Router)
    ]
    assert [router.config for router in routers] == [shipped]
    assert routers[0].table.rendezvous.depth == RANKING_DEPTH


def test_fleet_dependent_knobs_default_to_derived_and_each_can_be_set() -> None:
    derived = RouterSettings.from_env({}, base_model="m").routing
    assert (derived.hot_rate, derived.max_spread, derived.max_num_seqs) == (None, None, 0)
    chosen = RouterSettings.from_env(
        {
            "LORAPLEX_ROUTER_HOT_RATE": "8",
            "LORAPLEX_ROUTER_MAX_SPREAD": "4",
            "LORAPLEX_ROUTER_MAX_NUM_SEQS": "64",
        },
        base_model="m",
    ).routing
    assert (chosen.hot_rate, chosen.max_spread, chosen.max_num_seqs) == (8.0, 4, 64)


def fleet(workers: int) -> WorkerTable:
    table = WorkerTable(Rendezvous(seed=1, depth=RANKING_DEPTH))
    for i in range(workers):
        table.add_worker(f"worker-{i}")
    return table


def spread_of_hot_adapter(workers: int, share: float) -> int:
    """The spread of an adapter taking `share` of 200 requests a second, steady for 30 s."""
    router = Router(fleet(workers))
    tail = 0
    decision = None
    for tick in range(6_000):
        now = tick / 200
        if int((tick + 1) * share) > int(tick * share):  # `share` of the requests are the hot adapter's
            decision = router.decide("hot", now)
        else:
            tail += 1
            router.decide(f"tail-{tail % 5000}", now)
    assert decision is not None
    return decision.spread


@pytest.mark.parametrize(
    ("workers", "share", "spread"),
    [
        (10, 0.12, 2),  # a little above one worker's fair share (10%): a second copy
        (10, 0.06, 1),  # below it: one copy
        (10, 0.35, 4),
        (100, 0.115, 12),  # about the same adapter on a larger fleet: a worker's share is 1%
        (100, 0.5, RANKING_DEPTH),  # at most the ranking's depth
        (3, 0.9, 3),  # at most the healthy workers
    ],
)
def test_a_hot_adapter_spreads_by_its_share_of_the_fleets_traffic(
    workers: int, share: float, spread: int
) -> None:
    assert spread_of_hot_adapter(workers, share) == spread


def test_an_adapter_seen_once_does_not_spread_however_quiet_the_fleet() -> None:
    router = Router(fleet(10))
    decision = router.decide("only", 0.0)
    assert decision is not None
    assert decision.spread == 1


def test_a_set_hot_rate_and_max_spread_override_the_derived_ones() -> None:
    router = Router(fleet(10), RoutingConfig(hot_rate=1.0, max_spread=3))
    for tick in range(400):
        decision = router.decide("hot", tick / 20)  # 20 requests a second, all of the fleet's traffic
    assert decision is not None
    assert decision.spread == 3
    assert router.hot_rate(20.0) == 1.0


def documented_defaults() -> dict[str, str]:
    """`LORAPLEX_ROUTER_*` -> its default, from the settings table of docs/router.md."""
    rows = re.findall(
        r"^\| `(LORAPLEX_ROUTER_\w+)` \| ([^|]+) \|", (REPO / "docs/router.md").read_text(), re.M
    )
    return {name: default.strip() for name, default in rows}


ROUTING_VARIABLES = {
    "LORAPLEX_ROUTER_EPSILON": "epsilon",
    "LORAPLEX_ROUTER_HOT_RATE": "hot_rate",
    "LORAPLEX_ROUTER_MAX_SPREAD": "max_spread",
    "LORAPLEX_ROUTER_RATE_HALF_LIFE": "half_life",
    "LORAPLEX_ROUTER_MISS_CANDIDATES": "miss_candidates",
    "LORAPLEX_ROUTER_FIRST_CANDIDATES": "first_candidates",
    "LORAPLEX_ROUTER_MAX_NUM_SEQS": "max_num_seqs",
    "LORAPLEX_ROUTER_POLICY": "policy",
}


def test_the_docs_state_the_routing_defaults_the_code_has() -> None:
    documented = documented_defaults()
    shipped = RouterSettings.from_env({}, base_model="m").routing
    for variable, field in ROUTING_VARIABLES.items():
        value = getattr(shipped, field)
        text = documented[variable]
        if value is None or (field == "max_num_seqs" and value == 0):
            assert text.startswith("derived"), (variable, text)
        elif isinstance(value, str):
            assert text == value, (variable, text, value)
        else:
            assert float(text) == float(value), (variable, text, value)
    assert {f.name for f in dataclasses.fields(RoutingConfig)} == set(ROUTING_VARIABLES.values())


def test_no_chart_or_operator_setting_overrides_the_derived_routing_knobs() -> None:
    for path in ("charts/loraplex/values.yaml", "operator/fleet.py"):
        text = (REPO / path).read_text()
        for variable in ("LORAPLEX_ROUTER_HOT_RATE", "LORAPLEX_ROUTER_MAX_SPREAD", "hotRate", "maxSpread"):
            assert variable not in text, (path, variable)


def test_the_round_robin_baseline_takes_the_healthy_workers_in_turn_whatever_they_hold() -> None:
    table = fleet(3)
    table.set_residency("worker-1", {"a": "GPU"})
    table.set_healthy("worker-2", False)
    router = Router(
        table, RouterSettings.from_env({"LORAPLEX_ROUTER_POLICY": "round_robin"}, base_model="m").routing
    )
    chosen = [router.decide("a", float(t)) for t in range(4)]
    assert [(d.worker, d.hit) for d in chosen if d is not None] == [
        ("worker-1", "gpu"),
        ("worker-0", "miss"),
        ("worker-1", "gpu"),
        ("worker-0", "miss"),
    ]
    with pytest.raises(ValueError, match="LORAPLEX_ROUTER_POLICY"):
        RouterSettings.from_env({"LORAPLEX_ROUTER_POLICY": "random"}, base_model="m")


@pytest.mark.parametrize(
    ("engine_args", "env"),
    [
        ([], None),
        (["--max-num-seqs", "64"], "64"),
        (["--enforce-eager", "--max-num-seqs=32"], "32"),
    ],
)
def test_the_operator_tells_the_router_the_engines_concurrency_where_the_engine_args_set_it(
    engine_args: list[str], env: str | None
) -> None:
    spec = BaseModelSpec.model_validate({"model": {"uri": "pvc://models/m"}, "engine": {"args": engine_args}})
    deployment = router_deployment(BaseModelRef("m", "serving", "uid"), spec, OperatorSettings(image="x"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    values = {item["name"]: item.get("value") for item in container["env"]}
    assert values.get("LORAPLEX_ROUTER_MAX_NUM_SEQS") == env
    if env is not None:  # and the router reads it as its engines' concurrency
        assert RouterSettings.from_env(values, base_model="m").routing.max_num_seqs == int(env)
