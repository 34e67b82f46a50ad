"""The operator's Prometheus metrics move when the work they describe happens.

The handlers are taken from a kopf registry the real `register()` filled and called as kopf
would, with plain dicts for kopf's indexes and stand-ins for the API client and the applier.
Metrics live in prometheus_client's global registry, so each test reads how far a sample moved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from kubernetes import client
from prometheus_client import REGISTRY

from loraplex.api import API_VERSION
from loraplex.api.tiers import TIERS
from loraplex.operator import adapter_handlers, basemodel_handlers, placement_loop
from loraplex.operator.admission_policy import UNLOAD_FINALIZER
from loraplex.operator.fleet_scale import FleetTargets
from loraplex.operator.fleet_status import FleetPod
from loraplex.operator.indexes import ZONE_LABEL, Indexes, NodeView, WorkerPodView
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_handlers import TrainingLoop
from tests.operator.standins import StatusApi, Stopped

SETTINGS = OperatorSettings(image="loraplex:test")
LOGGER = logging.getLogger("test")
SHA = "1" * 64
ZONES = {"node-a": "zone-a", "node-b": "zone-b"}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Moved:
    """How far some samples moved since it was made."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self.samples = samples
        self.before = [sample(name, **labels) for name, labels in samples]

    def __call__(self) -> list[float]:
        return [
            sample(name, **labels) - b for (name, labels), b in zip(self.samples, self.before, strict=True)
        ]


def handler(registry: kopf.OperatorRegistry, handler_id: str) -> Callable[..., Any]:
    """The function kopf would call for the handler `handler_id` of `registry`."""
    kinds = (registry._changing, registry._watching, registry._spawning)  # kopf has no public lookup
    found = {h.fn for kind in kinds for h in kind.get_all_handlers() if h.id == handler_id}
    assert len(found) == 1, handler_id  # one function, maybe under several causes (create, update...)
    return found.pop()


class Applier:
    """Stands in for operator.apply.Applier: every manifest is new, so every apply is a write."""

    def __init__(self, clock: Clock | None = None, seconds_per_write: float = 0.0) -> None:
        self.clock, self.seconds_per_write = clock, seconds_per_write
        self.applied: list[dict[str, Any]] = []

    def apply_all(self, manifests: Iterable[dict[str, Any]]) -> int:
        written = list(manifests)
        self.applied += written
        if self.clock is not None:
            self.clock.now += self.seconds_per_write * len(written)
        return len(written)

    def apply(self, manifest: dict[str, Any]) -> bool:
        return self.apply_all([manifest]) == 1

    def create_if_missing(self, manifest: dict[str, Any]) -> bool:
        return self.apply(manifest)

    def delete(self, *_: Any) -> int:
        return 1


class Clock:
    """time.monotonic for the placement loop: it moves only when the stand-ins say an API call took time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def adapter(name: str, base: str, replicas: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LoRAAdapter",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "baseModel": base, "source": {"uri": f"s3://adapters/{name}/", "sha256": SHA}, "rank": 8,
            "replicas": replicas, **extra,
        },
        "status": {},
    }  # fmt: skip


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(placement_loop, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def run_placement_passes(
    monkeypatch: pytest.MonkeyPatch, base: str, adapters: list[dict[str, Any]], passes: int, clock: Clock,
    placements: list[dict[str, Any]] | None = None, reason: kopf.DaemonStoppingReason | None = None,
) -> StatusApi:  # fmt: skip
    """Run BaseModel `base`'s placement daemon for `passes` passes on two ready workers, in two zones,
    then stop it for `reason` (None: as if the operator went on running it)."""
    api = StatusApi()
    monkeypatch.setattr(
        placement_loop,
        "client",
        SimpleNamespace(CustomObjectsApi=lambda _: api, ApiException=client.ApiException),
    )
    registry = kopf.OperatorRegistry()
    applier = Applier(clock, seconds_per_write=5.0)  # each WorkerPlacement write takes 5 s on this clock
    placement_loop.register(registry, SETTINGS, None, applier, FleetTargets())  # type: ignore[arg-type]
    key = ("ns", base)
    pods = [WorkerPodView(FleetPod(f"w-{i}", True), node) for i, node in enumerate(ZONES)]
    handler(registry, "placement")(
        stopped=Stopped(passes, reason), name=base, namespace="ns", uid=f"uid-{base}",
        spec={"model": {"uri": "/m"}, "replicas": {"min": 2}, "engine": {"maxLoras": 1, "maxCpuLoras": 2}},
        body={"metadata": {"name": base, "namespace": "ns"}}, logger=LOGGER,
        adapters_by_base={key: adapters}, worker_sets={},
        pods={("worker", *key): pods},
        nodes={node: [NodeView({}, {ZONE_LABEL: zone}, True)] for node, zone in ZONES.items()},
        worker_placements={key: placements or []},
    )  # fmt: skip
    return api


def test_each_placement_pass_observes_the_planner_apart_from_its_api_writes(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    moved = Moved(
        ("loraplex_planner_duration_seconds_count", {}),
        ("loraplex_planner_duration_seconds_sum", {}),
        ("loraplex_placement_pass_duration_seconds_count", {}),
        ("loraplex_placement_pass_duration_seconds_sum", {}),
        ("loraplex_placement_passes_total", {"outcome": "ran"}),
        ("loraplex_placement_passes_total", {"outcome": "idle"}),
    )
    run_placement_passes(monkeypatch, "timed", [adapter("sql", "timed")], passes=3, clock=clock)
    planner_count, planner_seconds, pass_count, pass_seconds, ran, idle = moved()
    # The first pass wrote the two WorkerPlacements, 5 s each on the fake clock: the pass took that
    # time, the planner none. The indexes did not change after it, so the next two wake-ups were idle.
    assert (planner_count, pass_count, ran, idle) == (1, 1, 1, 2)
    assert (planner_seconds, pass_seconds) == (0.0, 10.0)


def test_placement_passes_report_copies_by_tier_and_adapters_pending(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    # Two workers with one GPU slot and one more CPU slot each: the pinned adapter takes both GPU
    # slots, chat's two copies go to CPU, and chat's third copy has no third worker to go to.
    adapters = [adapter("sql", "gauged", replicas=2, policy="Pinned"), adapter("chat", "gauged", replicas=3)]
    api = run_placement_passes(monkeypatch, "gauged", adapters, passes=1, clock=clock)
    tiers = {
        tier: sample("loraplex_adapter_copies", namespace="ns", base_model="gauged", tier=tier)
        for tier in ("GPU", "CPU", "Disk")
    }
    assert tiers == {"GPU": 2, "CPU": 2, "Disk": 0}
    assert sample("loraplex_adapters_pending", namespace="ns", base_model="gauged") == 1
    assert sorted(api.written) == ["chat", "sql"]


def test_a_deleted_base_models_series_go_with_it(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    adapters = [adapter("sql", "deleted", replicas=2)]
    run_placement_passes(monkeypatch, "deleted", adapters, passes=1, clock=clock)
    copies = [sample("loraplex_adapter_copies", namespace="ns", base_model="deleted", tier=t) for t in TIERS]
    assert sum(copies) == 2
    deleted = kopf.DaemonStoppingReason.RESOURCE_DELETED
    run_placement_passes(monkeypatch, "deleted", adapters, passes=1, clock=clock, reason=deleted)
    names = {"loraplex_adapter_copies", "loraplex_adapters_pending", "loraplex_placement_moves_total"}
    left = [
        sample.labels
        for family in REGISTRY.collect()
        for sample in family.samples
        if family.name in names or sample.name in names
        if sample.labels.get("base_model") == "deleted"
    ]
    assert left == []


def test_placement_passes_count_the_adapters_agents_report_active(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    held = [
        {"name": "sql", "sha256": "1" * 64, "tier": "GPU", "active": True},
        {"name": "gone", "sha256": "1" * 64, "tier": "CPU", "active": True},  # no such LoRAAdapter
        {"name": "chat", "sha256": "1" * 64, "tier": "CPU"},
    ]
    placement = {"metadata": {"name": "w-0"}, "spec": {"worker": "w-0"}, "status": {"adapters": held}}
    adapters = [adapter("sql", "active"), adapter("chat", "active")]
    run_placement_passes(monkeypatch, "active", adapters, passes=1, clock=clock, placements=[placement])
    assert sample("loraplex_adapters_active", namespace="ns", base_model="active") == 1


# Reconciles of every kind, by result, and the writes kopf sends from the handlers' patches.


def fleet_handler() -> Callable[..., Any]:
    registry = kopf.OperatorRegistry()
    basemodel_handlers.register(registry, SETTINGS, None, Applier(), FleetTargets())  # type: ignore[arg-type]
    return handler(registry, "fleet")


def reconcile_fleet(spec: dict[str, Any], status: dict[str, Any]) -> kopf.Patch:
    body = kopf.Body({"metadata": {"name": "fleet", "namespace": "ns", "generation": 1}, "status": status})
    patch = kopf.Patch()
    fleet_handler()(
        spec=spec, name="fleet", namespace="ns", uid="uid-fleet", body=body,
        patch=patch, logger=LOGGER, worker_sets={}, pods={}, worker_placements={},
    )  # fmt: skip
    return patch


def test_base_model_reconciles_are_timed_by_result_and_their_status_patch_counted() -> None:
    durations = Moved(
        ("loraplex_reconcile_duration_seconds_count", {"kind": "BaseModel", "result": "ok"}),
        ("loraplex_reconcile_duration_seconds_count", {"kind": "BaseModel", "result": "error"}),
    )
    writes = Moved(("loraplex_api_writes_total", {"resource": "BaseModel", "verb": "patch-status"}))
    spec = {"model": {"uri": "/m"}}
    patch = reconcile_fleet(spec, status={})
    assert patch["status"]["conditions"]
    assert writes() == [1]  # kopf sends the status the handler put in its patch
    assert not reconcile_fleet(spec, status=dict(patch["status"]))  # nothing changed: no patch, no write
    assert writes() == [1]
    with pytest.raises(kopf.PermanentError):
        reconcile_fleet({"model": {}}, status={})
    assert durations() == [2, 1]


def test_a_base_models_counters_are_exported_at_zero_before_their_first_event() -> None:
    # A dashboard panel or an alert over a counter that never moved still gets a series (of 0).
    reconcile_fleet({"model": {"uri": "/m"}}, status={})
    labels = {"namespace": "ns", "base_model": "fleet"}
    scalings = [REGISTRY.get_sample_value("loraplex_fleet_scalings_total", {**labels, "direction": d})
                for d in ("up", "down")]  # fmt: skip
    assert scalings == [0.0, 0.0]
    assert REGISTRY.get_sample_value("loraplex_placement_moves_total", labels) == 0.0


def check_handler(base_models: dict[Any, Any]) -> Callable[[dict[str, Any], kopf.Patch], None]:
    """The LoRAAdapter check, as kopf calls it on one event of an adapter."""
    registry = kopf.OperatorRegistry()
    adapter_handlers.register(registry, None)  # type: ignore[arg-type]
    check = handler(registry, "check")

    def on_event(raw: dict[str, Any], patch: kopf.Patch) -> None:
        body = kopf.Body(raw)  # type: ignore[arg-type]
        asyncio.run(
            check(
                type="MODIFIED", body=body, spec=body.spec, name=body.metadata.name, namespace="ns",
                meta=body.metadata, status=body.status, patch=patch, base_models=base_models,
                worker_placements={}, adapters_by_base={},
            )
        )  # fmt: skip

    return on_event


@pytest.fixture
def no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "warn", lambda *_, **__: None)


def test_adapter_checks_are_timed_by_result_and_their_patches_counted(no_events: None) -> None:
    durations = Moved(
        ("loraplex_reconcile_duration_seconds_count", {"kind": "LoRAAdapter", "result": "invalid"}),
        ("loraplex_reconcile_duration_seconds_count", {"kind": "LoRAAdapter", "result": "ok"}),
    )
    writes = Moved(
        ("loraplex_api_writes_total", {"resource": "LoRAAdapter", "verb": "patch"}),
        ("loraplex_api_writes_total", {"resource": "LoRAAdapter", "verb": "patch-status"}),
    )
    on_event = check_handler(base_models={})
    orphan = adapter("orphan", "missing")
    patch = kopf.Patch()
    on_event(orphan, patch)  # no BaseModel: the finalizer and an UnknownBaseModel status
    assert patch["metadata"]["finalizers"] == [UNLOAD_FINALIZER]
    assert patch["status"]["phase"] == "Failed"
    assert writes() == [1, 1]
    # The next event shows both written: judged already, nothing more to write.
    orphan["metadata"]["finalizers"], orphan["status"] = [UNLOAD_FINALIZER], dict(patch["status"])
    patch = kopf.Patch()
    on_event(orphan, patch)
    assert not patch
    assert writes() == [1, 1]
    # Deleted: kopf sends the finalizer's removal.
    orphan["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    on_event(orphan, patch)
    assert patch["metadata"]["finalizers"] == []
    assert writes() == [2, 1]
    placeable = adapter("sql", "tiny")
    placeable["metadata"]["finalizers"] = [UNLOAD_FINALIZER]
    check_handler(base_models={("ns", "tiny"): [("uid-tiny", {"model": {"uri": "/m"}})]})(
        placeable, kopf.Patch()
    )
    assert durations() == [1, 1]


def test_a_training_pass_is_a_timed_training_job_reconcile() -> None:
    moved = Moved(("loraplex_reconcile_duration_seconds_count", {"kind": "TrainingJob", "result": "ok"}))
    loop = TrainingLoop(SETTINGS, None, None, FleetTargets())  # type: ignore[arg-type]
    loop.run(Indexes({}, {}, {}, {}, {}, {}), LOGGER, force=True)  # type: ignore[arg-type]
    assert moved() == [1]
