"""An API error during a placement pass is logged, counted and retried; the loop's memory survives it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf
import urllib3
from kubernetes import client
from prometheus_client import REGISTRY

from loraplex.api import API_VERSION
from loraplex.operator import placement_loop
from loraplex.operator.fleet import BaseModelRef
from loraplex.operator.fleet_scale import FleetTargets
from loraplex.operator.fleet_status import FleetPod
from loraplex.operator.indexes import Indexes, NodeView, WorkerPodView
from loraplex.operator.placement_loop import PlacementLoop
from loraplex.operator.settings import OperatorSettings
from tests.operator.standins import StatusApi, Stopped

SETTINGS = OperatorSettings(image="loraplex:test", scale_down_delay_seconds=300.0)
REF = BaseModelRef("flaky", "ns", "uid-flaky")
KEY = ("ns", "flaky")
SHA = "1" * 64
SPEC = {"model": {"uri": "/m"}, "replicas": {"min": 1, "max": 3}, "engine": {"maxLoras": 1, "maxCpuLoras": 2}}


class Applier:
    """Stands in for operator.apply.Applier; fails while `failing` says so."""

    def __init__(self) -> None:
        self.failing: Exception | None = None
        self.applied: list[dict[str, Any]] = []

    def apply_all(self, manifests: Iterable[dict[str, Any]]) -> int:
        if self.failing is not None:
            raise self.failing
        written = list(manifests)
        self.applied += written
        return len(written)

    def delete(self, *_: Any) -> bool:
        return True


class Writers:
    """A synchronous executor."""

    def map(self, fn: Any, items: Iterable[Any]) -> Iterable[Any]:
        return [fn(item) for item in items]


def failed_passes() -> float:
    return REGISTRY.get_sample_value("loraplex_placement_passes_total", {"outcome": "failed"}) or 0.0


def indexes(workers: int = 2, replicas: int = 3) -> Indexes:
    """`workers` ready workers of `replicas` the StatefulSet runs, one adapter (one worker would do)."""
    adapter = {
        "apiVersion": API_VERSION, "kind": "LoRAAdapter",
        "metadata": {"name": "sql", "namespace": "ns", "uid": "uid-sql", "generation": 1},
        "spec": {"baseModel": "flaky", "source": {"uri": "s3://bucket/sql/", "sha256": SHA}, "rank": 8},
        "status": {},
    }  # fmt: skip
    pods = [WorkerPodView(FleetPod(f"w-{i}", True), f"node-{i}") for i in range(workers)]
    return Indexes(
        adapters_by_base={KEY: [adapter]},  # type: ignore[arg-type]
        worker_sets={KEY: [{"metadata": {"name": "flaky-worker"}, "spec": {"replicas": replicas}}]},  # type: ignore[arg-type]
        pods={("worker", *KEY): pods},  # type: ignore[arg-type]
        nodes={f"node-{i}": [NodeView({}, {}, True)] for i in range(workers)},  # type: ignore[arg-type]
    )


def make_loop() -> tuple[PlacementLoop, Applier, StatusApi, FleetTargets]:
    applier, api, targets = Applier(), StatusApi(), FleetTargets()
    logger = logging.getLogger("test")
    loop = PlacementLoop(REF, SETTINGS, api, Writers(), applier, targets, logger)  # type: ignore[arg-type]
    return loop, applier, api, targets


def test_an_api_error_during_a_pass_keeps_the_loops_state_and_the_next_wake_up_retries() -> None:
    loop, applier, api, targets = make_loop()
    seen = indexes()
    gate, state, sync = loop.gate, loop.state, loop.state.sync
    before = failed_passes()

    applier.failing = client.ApiException(status=500, reason="Internal Server Error")
    loop.wake(seen, SPEC)  # must not raise
    assert failed_passes() - before == 1
    assert (applier.applied, api.written) == ([], [])
    assert targets.get(KEY) == 3  # the scale-down waits out its delay
    assert state.step is not None
    assert state.step.below_since is not None
    below_since = state.step.below_since

    applier.failing = urllib3.exceptions.ProtocolError("Connection aborted.")
    loop.wake(seen, SPEC)  # nothing changed, but the failed pass runs again
    assert failed_passes() - before == 2

    applier.failing = None
    loop.wake(seen, SPEC)
    assert sorted(m["metadata"]["name"] for m in applier.applied) == ["w-0", "w-1"]
    assert api.written == ["sql"]
    # The same memory throughout: the gate, the planner, and the scale-down delay's start.
    assert (loop.gate, loop.state, loop.state.sync) == (gate, state, sync)
    assert loop.state.step is not None
    assert loop.state.step.below_since == below_since


def test_a_failed_pass_runs_again_though_nothing_changed_and_nothing_else_is_pending() -> None:
    loop, applier, api, _ = make_loop()
    seen = indexes(workers=1, replicas=1)  # the fleet is the size it should be: no scale-down waits
    applier.failing = client.ApiException(status=500, reason="Internal Server Error")
    loop.wake(seen, SPEC)
    assert not loop.state.pending
    applier.failing = None
    loop.wake(seen, SPEC)  # the same snapshot: only the failure makes this pass due
    assert [m["metadata"]["name"] for m in applier.applied] == ["w-0"]
    assert api.written == ["sql"]


def test_the_daemon_outlives_api_errors() -> None:
    registry = kopf.OperatorRegistry()
    applier = Applier()
    applier.failing = client.ApiException(status=503, reason="Service Unavailable")
    placement_loop.register(registry, SETTINGS, None, applier, FleetTargets())  # type: ignore[arg-type]
    (daemon,) = [h.fn for h in registry._spawning.get_all_handlers() if h.id == "placement"]
    before = failed_passes()
    seen = indexes()
    daemon(
        stopped=Stopped(3), name=REF.name, namespace=REF.namespace, uid=REF.uid, spec=SPEC,
        logger=logging.getLogger("test"), adapters_by_base=seen.adapters_by_base,
        worker_sets=seen.worker_sets, pods=seen.pods, nodes=seen.nodes,
    )  # fmt: skip
    assert failed_passes() - before == 3
