"""How often the operator reads a stuck pod's Events (the reading itself, on the real API server:
tests/cluster/test_pod_setup_events.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loraplex.operator.fleet_status import FleetPod
from loraplex.operator.pod_events import PodSetupEvents

SCHEDULED = "2026-12-04T10:00:00Z"
T0 = datetime.fromisoformat(SCHEDULED).timestamp()


class Core:
    """The calls PodSetupEvents makes of CoreV1Api: each pod's Events by uid, and which uids it read."""

    def __init__(self, events: dict[str, list[dict[str, Any]]]) -> None:
        self.events = events
        self.reads: list[str] = []
        self.api_client = self

    def list_namespaced_event(self, namespace: str, field_selector: str) -> dict[str, Any]:
        uid = field_selector.split(",")[0].removeprefix("involvedObject.uid=")
        self.reads.append(uid)
        return {"items": self.events.get(uid, [])}

    def sanitize_for_serialization(self, answer: dict[str, Any]) -> dict[str, Any]:
        return answer


def test_a_fleet_of_stuck_pods_costs_a_few_reads_a_pass_each_pod_read_in_turn() -> None:
    pods = [FleetPod(f"w-{i}", False, uid=f"u{i}", setting_up_since=SCHEDULED) for i in range(7)]
    mount = {
        "type": "Warning",
        "reason": "FailedMount",
        "message": "Multi-Attach error",
        "lastTimestamp": "T",
    }
    core = Core({pod.uid: [mount] for pod in pods})
    clock = [T0 + 60]
    events = PodSetupEvents(core, reads_per_pass=3, recheck_seconds=10, clock=lambda: clock[0])  # type: ignore[arg-type]

    def status_pass(at: float) -> tuple[list[str], list[str]]:
        """(the pods whose trouble the status knows, the pods whose Events this pass read)."""
        clock[0] = T0 + at
        core.reads.clear()
        known = events.with_volume_trouble("ns", pods)
        assert [p.name for p in known] == [p.name for p in pods]  # every pod, in order
        return [p.uid for p in known if p.volume_trouble == "FailedMount: Multi-Attach error"], core.reads

    first3, all7 = ["u0", "u1", "u2"], [f"u{i}" for i in range(7)]
    assert status_pass(60) == (first3, first3)
    assert status_pass(62) == ([*first3, "u3", "u4", "u5"], ["u3", "u4", "u5"])
    assert status_pass(64) == (all7, ["u6"])  # the others were read under 10 s ago
    assert status_pass(66) == (all7, [])
    assert status_pass(70) == (all7, first3)  # due again
    # A new pod's Events are read before those read longest ago.
    pods.append(FleetPod("w-7", False, uid="u7", setting_up_since=SCHEDULED))
    core.events["u7"] = [mount]
    assert status_pass(80) == ([*all7, "u7"], ["u7", "u3", "u4"])
    # Pods that started are not read any more.
    pods[1:] = [FleetPod(p.name, True, uid=p.uid) for p in pods[1:]]
    assert status_pass(140) == (["u0"], ["u0"])
