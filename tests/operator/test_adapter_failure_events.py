"""An agent's failure reaches the LoRAAdapter as one Warning Event, on the pass that first shows it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
import pytest

from loraplex.api import API_VERSION
from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.operator.adapter_residency import FleetSize
from loraplex.operator.placement import Adapter
from loraplex.operator.placement_loop import write_adapter_statuses as _write_adapter_statuses
from loraplex.operator.placement_pass import worker_reports as _reports

SPEC = {"baseModel": "llama-8b", "source": {"uri": "s3://adapters/sql/", "sha256": "1" * 64}, "rank": 16}
PLACEMENT = {"sql": {"w-0": "GPU"}}
FLEET = FleetSize(ready=1, target=1)


class Response:
    def drain_conn(self) -> None:
        pass


class StatusApi:
    """Stands in for CustomObjectsApi: records each adapter status written."""

    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> Response:
        self.written.append(args[-1]["status"])
        return Response()


def adapter_body(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LoRAAdapter",
        "metadata": {"name": "sql", "namespace": "team", "uid": "uid-sql", "generation": 1},
        "spec": SPEC,
        "status": status,
    }


def worker_placement(failures: list[dict[str, str]]) -> dict[str, Any]:
    return {"spec": {"worker": "w-0"}, "status": {"adapters": [], "failures": failures}}


FAILING = [worker_placement([{"name": "sql", "reason": "DigestMismatch", "message": "sha256 is 9f3e"}])]


def one_pass(
    api: StatusApi, status: dict[str, Any], placements: list[dict[str, Any]], announced: dict[str, str]
) -> dict[str, Any]:
    """One placement pass's status writes for adapter sql, as kopf's index shows it with `status`; its
    status afterwards. `announced` is the loop's memory across passes."""
    adapters = {"sql": (Adapter("sql"), LoRAAdapterSpec.model_validate(SPEC), adapter_body(status))}
    before = len(api.written)
    with ThreadPoolExecutor(max_workers=1) as writers:
        reports = _reports(placements)
        _write_adapter_statuses(api, writers, "team", adapters, PLACEMENT, reports, FLEET, announced)  # type: ignore[arg-type]
    return api.written[-1] if len(api.written) > before else status


def test_one_warning_event_when_an_agent_failure_becomes_the_ready_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[tuple[dict[str, Any], str, str]] = []
    monkeypatch.setattr(
        kopf, "warn", lambda body, *, reason, message: events.append((dict(body), reason, message))
    )
    api, announced = StatusApi(), {}
    status = one_pass(api, {}, [worker_placement([])], announced)  # placed, loading: no Event
    assert events == []
    status = one_pass(api, status, FAILING, announced)
    status = one_pass(api, status, FAILING, announced)  # still failing: no second Event
    assert len(events) == 1
    body, reason, message = events[0]
    assert (reason, message) == ("DigestMismatch", "w-0 could not load it: sha256 is 9f3e")
    assert (body["kind"], body["metadata"]["uid"]) == ("LoRAAdapter", "uid-sql")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == message


def test_no_second_event_while_the_index_still_shows_the_status_from_before_the_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(kopf, "warn", lambda body, *, reason, message: events.append(reason))
    api, announced = StatusApi(), {}
    loading = one_pass(api, {}, [worker_placement([])], announced)
    one_pass(api, loading, FAILING, announced)
    one_pass(api, loading, FAILING, announced)  # kopf's index lags this loop's own status write
    assert events == ["DigestMismatch"]

    loaded = [{"spec": {"worker": "w-0"}, "status": {"adapters": [
        {"name": "sql", "sha256": "1" * 64, "tier": "GPU"}], "failures": []}}]  # fmt: skip
    ready = one_pass(api, loading, loaded, announced)  # fixed: Ready again
    one_pass(api, ready, FAILING, announced)  # broken again later: news again
    assert events == ["DigestMismatch", "DigestMismatch"]
