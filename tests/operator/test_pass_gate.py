"""The placement loop runs a pass only when what it reads changed, work is pending, or a resync is due."""

from __future__ import annotations

from loraplex.operator.pass_gate import PassGate


def test_a_pass_runs_first_then_only_when_an_index_holds_other_objects() -> None:
    gate = PassGate(resync_seconds=30.0)
    adapter, placement = {"name": "sql"}, {"name": "w-0"}
    assert gate.due(([adapter], [placement]), ("workers",), pending=False, now=0.0)
    assert not gate.due(([adapter], [placement]), ("workers",), pending=False, now=1.0)
    # A watch event: kopf's index now holds a new object for the adapter, equal or not.
    updated = dict(adapter)
    assert gate.due(([updated], [placement]), ("workers",), pending=False, now=2.0)
    assert not gate.due(([updated], [placement]), ("workers",), pending=False, now=3.0)
    assert gate.due(([updated], []), ("workers",), pending=False, now=4.0)  # a WorkerPlacement went


def test_values_compared_by_equality_pending_work_and_the_resync_each_run_a_pass() -> None:
    gate = PassGate(resync_seconds=30.0)
    indexed: list[list[object]] = [[], []]
    assert gate.due(indexed, ({"w-0": "zone-a"}, {"replicas": 2}), pending=False, now=0.0)
    assert not gate.due(indexed, ({"w-0": "zone-a"}, {"replicas": 2}), pending=False, now=1.0)
    assert gate.due(indexed, ({"w-0": "zone-a"}, {"replicas": 3}), pending=False, now=2.0)  # spec
    assert gate.due(indexed, ({"w-0": "zone-b"}, {"replicas": 3}), pending=False, now=3.0)  # workers
    assert gate.due(indexed, ({"w-0": "zone-b"}, {"replicas": 3}), pending=True, now=4.0)  # rebalance
    assert not gate.due(indexed, ({"w-0": "zone-b"}, {"replicas": 3}), pending=False, now=33.0)
    assert gate.due(indexed, ({"w-0": "zone-b"}, {"replicas": 3}), pending=False, now=34.0)  # resync
