"""The WorkerPlacement status on the wire: the agent writes it through the model, the operator and the
router read it back through the same model, and the tiers are one enum on every side."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loraplex.api.agent import AgentResidency
from loraplex.api.conditions import ConditionUpdate, merge_conditions
from loraplex.api.tiers import TIERS, Tier, TierRank, parse_tier
from loraplex.api.wire import to_wire
from loraplex.api.workerplacement import (
    AdapterFailure,
    ResidentAdapter,
    WorkerPlacementStatus,
    read_status,
)

DIGEST = "a" * 64


def residency(**changes: Any) -> AgentResidency:
    fields: dict[str, Any] = {
        "worker": "llama-worker-0",
        "engine_ready": True,
        "adapters": [
            ResidentAdapter(name="sql-gen", sha256=DIGEST, tier=Tier.GPU, bytes=1024, load_seconds=0.25),
            ResidentAdapter(
                name="user-7", sha256=DIGEST, tier="CPU", catalog=True, on_demand=True, active=True
            ),
            ResidentAdapter(name="cold", sha256=DIGEST, tier=Tier.DISK),
        ],
        "failures": [AdapterFailure(name="broken", reason="DigestMismatch", message="got another digest")],
        "gpu_slots": 4,
        "cpu_slots": 8,
        "held": "2/3",
        "observed_generation": 7,
    }
    return AgentResidency(**(fields | changes))


def test_the_agents_report_is_written_as_the_agent_always_wrote_it() -> None:
    assert to_wire(residency()) == {
        "worker": "llama-worker-0",
        "engineReady": True,
        "adapters": [
            {"name": "sql-gen", "sha256": DIGEST, "tier": "GPU", "bytes": 1024, "loadSeconds": 0.25},
            {
                "name": "user-7",
                "sha256": DIGEST,
                "tier": "CPU",
                "catalog": True,
                "onDemand": True,
                "active": True,
            },
            {"name": "cold", "sha256": DIGEST, "tier": "Disk"},  # false flags and unknown sizes left out
        ],
        "failures": [{"name": "broken", "reason": "DigestMismatch", "message": "got another digest"}],
        "gpuSlots": 4,
        "cpuSlots": 8,
        "held": "2/3",
        "observedGeneration": 7,
    }
    assert to_wire(residency(observed_generation=None))["observedGeneration"] is None  # no placement yet


def test_the_status_written_round_trips_through_its_readers() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    conditions = merge_conditions([], [ConditionUpdate("Ready", "False", "Loading", "held 2 of 3")], 7, now)
    status = residency().placement_status(conditions)
    wire = to_wire(status)
    assert "worker" not in wire
    assert "engineReady" not in wire
    assert wire["conditions"] == conditions  # the shape merge_conditions keeps, timestamps included
    assert read_status(wire) == status
    assert read_status(to_wire(residency())) == residency().placement_status([]).model_copy(
        update={"conditions": []}
    )


def test_a_reader_is_tolerant_of_what_it_does_not_know_and_of_what_is_missing() -> None:
    assert read_status(None) == WorkerPlacementStatus()
    assert read_status({}) == WorkerPlacementStatus()
    odd = {
        "adapters": [
            {"name": "sql-gen", "tier": "GPU"},  # no digest: still held
            {"name": "weird", "tier": "Tape"},  # not a tier: left out
            {"tier": "CPU"},  # no name: left out
            "not an entry",
        ],
        "gpuSlots": "four",  # not a number: as if unset
        "cpuSlots": 8,
        "somethingNew": True,  # a field this reader does not know
    }
    status = read_status(odd)
    assert [(a.name, a.tier, a.sha256) for a in status.adapters] == [("sql-gen", Tier.GPU, None)]
    assert (status.gpu_slots, status.cpu_slots, status.failures) == (None, 8, [])


def test_an_entry_with_a_field_a_newer_agent_adds_is_kept_without_it() -> None:
    newer = {
        "adapters": [
            {"name": "sql-gen", "tier": "GPU", "sha256": "ab" * 32, "warmth": 0.9},  # a field to come
            {"name": "chat", "tier": "CPU"},
        ],
        "failures": [{"name": "bad", "reason": "DigestMismatch", "message": "m", "retryAfter": 5}],
    }
    status = read_status(newer)
    assert [(a.name, a.tier) for a in status.adapters] == [("sql-gen", Tier.GPU), ("chat", Tier.CPU)]
    assert status.adapters[0].sha256 == "ab" * 32
    assert [f.name for f in status.failures] == ["bad"]


def test_the_tiers_are_one_enum_in_speed_order() -> None:
    assert [tier.value for tier in TIERS] == ["GPU", "CPU", "Disk"]
    assert [rank.tier for rank in TierRank] == list(Tier)
    assert [tier.rank for tier in Tier] == [TierRank.GPU, TierRank.CPU, TierRank.DISK]
    assert Tier.DISK == "Disk"
    assert {"Disk": 1}[Tier.DISK] == 1
    assert (parse_tier("Disk"), parse_tier("DISK"), parse_tier(None)) == (Tier.DISK, None, None)
