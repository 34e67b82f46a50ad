"""Cluster mode carries each LoRAAdapter's `spec.access` into the router's state, and never fails open."""

from __future__ import annotations

from typing import Any

from loraplex.api.access import AccessList, RouterAccess
from loraplex.router.access import may_use
from loraplex.router.kube_source import KubeSource, apply_adapter
from loraplex.router.principal import Principal
from loraplex.router.rendezvous import Rendezvous
from loraplex.router.state import FleetState
from loraplex.router.table import WorkerTable

SHA = "a" * 64


def adapter(name: str, access: Any = None, base: str = "llama") -> dict[str, Any]:
    spec: dict[str, Any] = {"baseModel": base, "source": {"uri": "s3://b/x", "sha256": SHA}, "rank": 8}
    if access is not None:
        spec["access"] = access
    return {"metadata": {"name": name}, "spec": spec}


def state() -> FleetState:
    return FleetState(WorkerTable(Rendezvous(seed=0)))


def usable(fleet: FleetState, name: str, subject: str) -> bool:
    rule = fleet.access_rule(name)
    return may_use(RouterAccess(), Principal(subject), name, named=fleet.table.is_named(name), rule=rule)


def test_a_loraadapters_access_list_reaches_the_state_and_follows_its_edits() -> None:
    fleet = state()
    apply_adapter(fleet, "ADDED", adapter("sql", {"subjects": ["alice"]}), "llama")
    assert fleet.access_rule("sql") == AccessList(subjects=["alice"])
    assert usable(fleet, "sql", "alice")
    assert not usable(fleet, "sql", "bob")
    apply_adapter(fleet, "MODIFIED", adapter("sql"), "llama")
    assert usable(fleet, "sql", "bob")


def test_a_deleted_private_adapter_stays_private_while_placements_may_list_it() -> None:
    fleet = state()
    apply_adapter(fleet, "ADDED", adapter("sql", {"subjects": ["alice"]}), "llama")
    apply_adapter(fleet, "DELETED", adapter("sql", {"subjects": ["alice"]}), "llama")
    assert not usable(fleet, "sql", "bob")


def test_an_unreadable_access_list_admits_no_one() -> None:
    fleet = state()
    apply_adapter(fleet, "ADDED", adapter("sql", {"subjects": "alice"}), "llama")
    assert not usable(fleet, "sql", "alice")


def test_another_base_models_adapter_is_ignored() -> None:
    fleet = state()
    apply_adapter(fleet, "ADDED", adapter("sql", {"subjects": ["alice"]}, base="other"), "llama")
    assert fleet.access_rule("sql") is None


def test_the_router_is_synced_only_once_the_adapters_and_their_access_are_listed() -> None:
    fleet = state()
    source = KubeSource(fleet, "ns", "llama")
    source._relisted("pods", [], lambda kind, obj: None)
    source._relisted("placements", [], lambda kind, obj: None)
    assert not fleet.synced
    source._relisted("adapters", [], lambda kind, obj: None)
    assert fleet.synced
