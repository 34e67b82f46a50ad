"""The placement loop's planner stays in step with the fleet, moving only what a change demands."""

from __future__ import annotations

from loraplex.operator.placement import Adapter, Worker
from loraplex.operator.placement_sync import FleetSnapshot, PlacementSync


def workers(count: int) -> dict[str, Worker]:
    return {
        f"w-{i}": Worker(
            f"w-{i}", node=f"node-{i}", zone=f"zone-{i % 3}", gpu_slots=2, cpu_slots=4, disk_slots=16
        )
        for i in range(count)
    }


def adapters(count: int, replicas: int = 1) -> dict[str, Adapter]:
    return {f"a-{i}": Adapter(f"a-{i}", replicas=replicas) for i in range(count)}


def copies_on(placement: dict[str, dict[str, str]], worker: str) -> set[str]:
    return {adapter for adapter, where in placement.items() if worker in where}


def test_first_pass_places_every_copy_once() -> None:
    result = PlacementSync().sync(FleetSnapshot(workers(4), adapters(20, replicas=2)), recorded={})
    assert result.missing == {}
    assert all(len(where) == 2 for where in result.placement.values())
    assert sum(len(where) for where in result.placement.values()) == 40


def test_a_restarted_operator_keeps_what_the_cluster_records() -> None:
    snapshot = FleetSnapshot(workers(4), adapters(20))
    first = PlacementSync().sync(snapshot, recorded={})
    again = PlacementSync().sync(snapshot, recorded=first.placement)
    assert again.placement == first.placement
    assert again.moved == 0


def test_an_unchanged_fleet_moves_nothing() -> None:
    sync = PlacementSync()
    snapshot = FleetSnapshot(workers(4), adapters(20))
    first = sync.sync(snapshot, recorded={})
    second = sync.sync(FleetSnapshot(dict(snapshot.workers), dict(snapshot.adapters)), recorded={})
    assert second.moved == 0
    assert second.placement == first.placement


def test_losing_a_worker_moves_only_its_copies() -> None:
    sync = PlacementSync(max_rebalance_moves=0)
    fleet = workers(4)
    first = sync.sync(FleetSnapshot(fleet, adapters(30)), recorded={})
    lost = copies_on(first.placement, "w-2")
    remaining = {name: worker for name, worker in fleet.items() if name != "w-2"}
    second = sync.sync(FleetSnapshot(remaining, adapters(30)), recorded={})
    assert copies_on(second.placement, "w-2") == set()
    relocated = {a for a in first.placement if set(first.placement[a]) != set(second.placement[a])}
    assert relocated == lost  # other copies may only change tier: the fleet lost GPU slots
    assert all(len(where) == 1 for where in second.placement.values())


def test_removed_and_changed_adapters_follow() -> None:
    sync = PlacementSync()
    fleet, catalog = workers(3), adapters(5)
    sync.sync(FleetSnapshot(fleet, catalog), recorded={})
    changed = {**{k: v for k, v in catalog.items() if k != "a-0"}, "a-1": Adapter("a-1", replicas=3)}
    result = sync.sync(FleetSnapshot(fleet, changed), recorded={})
    assert "a-0" not in result.placement
    assert len(result.placement["a-1"]) == 3


def test_new_workers_are_filled_in_bounded_steps_until_even() -> None:
    sync = PlacementSync(max_rebalance_moves=3)
    catalog = adapters(40)
    sync.sync(FleetSnapshot(workers(2), catalog), recorded={})
    steps = []
    for _ in range(20):
        result = sync.sync(FleetSnapshot(workers(4), catalog), recorded={})
        steps.append(result.moved)
        if result.moved == 0:
            break
    # Every pass, the first after the scale-out included, moves at most the budget (tier reorders count).
    assert 0 < steps[0] <= 3
    assert all(moved <= 3 for moved in steps)
    assert steps[-1] == 0  # it settles
    assert copies_on(result.placement, "w-2")
    assert copies_on(result.placement, "w-3")


def test_copies_that_found_no_slot_are_placed_on_new_workers_at_once() -> None:
    sync = PlacementSync(max_rebalance_moves=1)
    catalog = adapters(40, replicas=2)  # 80 copies; one worker holds 22, one copy of each adapter
    first = sync.sync(FleetSnapshot(workers(1), catalog), recorded={})
    assert sum(first.missing.values()) == 58
    second = sync.sync(FleetSnapshot(workers(4), catalog), recorded={})
    assert second.missing == {}  # not held to the one-move rebalance budget
    assert second.moved >= 58


def test_a_restart_keeps_every_copy_in_its_tier_whatever_order_the_adapters_came_in() -> None:
    # Adapters of equal priority arrive over several passes; the incremental placement hands out tiers
    # first come, first served. A full re-plan would rank them afresh (by name) and demote some warm GPU
    # copies to Disk; a restarted operator adopts what the cluster records instead.
    fleet = {f"w-{i}": Worker(f"w-{i}", f"node-{i}", f"zone-{i}", 2, 2, 64) for i in range(3)}
    arriving = [f"adapter-{i:02d}" for i in (7, 2, 29, 11, 0, 18, 25, 4, 13, 21, 9, 27, 1, 16, 23)]
    sync, present = PlacementSync(), {}
    for batch in range(0, len(arriving), 4):
        for name in arriving[batch : batch + 4]:
            present[name] = Adapter(name, replicas=2 if name.endswith("0") else 1)
        before = sync.sync(FleetSnapshot(fleet, dict(present)), recorded={})
    # A new operator's index lists them in another order (here: by name).
    resumed = PlacementSync().sync(FleetSnapshot(fleet, dict(sorted(present.items()))), before.placement)
    assert resumed.moved == 0
    assert resumed.placement == before.placement


def test_a_restart_repairs_only_what_changed_meanwhile() -> None:
    fleet = workers(3)
    first = PlacementSync().sync(FleetSnapshot(fleet, adapters(12)), recorded={})
    recorded = {name: dict(where) for name, where in first.placement.items()}
    recorded["gone"] = {"w-0": "Disk"}  # deleted while the operator was down
    changed = dict(adapters(12), **{"a-3": Adapter("a-3", replicas=2), "new": Adapter("new")})
    resumed = PlacementSync().sync(FleetSnapshot(fleet, changed), recorded=recorded)
    assert "gone" not in resumed.placement
    assert len(resumed.placement["a-3"]) == 2
    assert len(resumed.placement["new"]) == 1
    kept = {name for name in first.placement if name != "a-3"}
    assert all(resumed.placement[name] == first.placement[name] for name in kept)
    assert resumed.moved == 3  # gone's copy removed, a second copy of a-3, the new adapter's copy


def test_a_priority_raised_while_no_operator_ran_lifts_the_adapter_when_one_resumes() -> None:
    fleet = {"w-0": Worker("w-0", "node-0", "zone-0", gpu_slots=1, cpu_slots=1, disk_slots=4)}
    first = PlacementSync().sync(FleetSnapshot(fleet, adapters(3)), recorded={})
    on_disk = next(name for name, where in first.placement.items() if where["w-0"] == "Disk")
    raised = dict(adapters(3), **{on_disk: Adapter(on_disk, priority=5)})
    resumed = PlacementSync().sync(FleetSnapshot(fleet, raised), recorded=first.placement)
    assert resumed.placement[on_disk] == {"w-0": "GPU"}
    assert sorted(where["w-0"] for where in resumed.placement.values()) == ["CPU", "Disk", "GPU"]


def test_an_adapter_created_with_higher_priority_while_no_operator_ran_takes_a_lower_ones_slot() -> None:
    fleet = {"w-0": Worker("w-0", "node-0", "zone-0", gpu_slots=1, cpu_slots=1, disk_slots=1)}
    first = PlacementSync().sync(FleetSnapshot(fleet, adapters(3)), recorded={})
    assert first.missing == {}  # every slot is taken
    urgent = dict(adapters(3), urgent=Adapter("urgent", priority=100))
    resumed = PlacementSync().sync(FleetSnapshot(fleet, urgent), recorded=first.placement)
    assert resumed.placement["urgent"] == {"w-0": "GPU"}
    assert sum(resumed.missing.values()) == 1  # one priority-0 copy gave way
    assert sorted(where["w-0"] for where in resumed.placement.values()) == ["CPU", "Disk", "GPU"]
