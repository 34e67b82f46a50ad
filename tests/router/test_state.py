"""The router's live state: vLLM load parsing, liveness with bounded staleness, and its two sources."""

from __future__ import annotations

from typing import Any

import aiohttp

from loraplex.router.kube_source import apply_adapter, apply_placement, apply_pod
from loraplex.router.load import LoadPoller, parse_load
from loraplex.router.rendezvous import Rendezvous
from loraplex.router.settings import StaticWorker
from loraplex.router.state import FleetState
from loraplex.router.static_source import StaticSource
from loraplex.router.table import WorkerTable


def new_state(stale_after: float = 2.0) -> FleetState:
    return FleetState(WorkerTable(Rendezvous()), stale_after=stale_after)


def test_load_is_running_plus_waiting_over_every_label_set() -> None:
    text = "\n".join(
        [
            "# HELP vllm:num_requests_running Number of requests running.",
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 1.0',
            'vllm:num_requests_waiting{model_name="m"} 2.0',
            'vllm:num_requests_waiting_by_reason{reason="x"} 9.0',
            'vllm:lora_requests_info{running_lora_adapters="a"} 1.7e9',
        ]
    )
    assert parse_load(text) == 6


def test_a_worker_serves_only_while_its_polls_are_fresh_and_nothing_failed_there() -> None:
    state = new_state(stale_after=2.0)
    state.upsert_worker("w", "http://v", "http://a", ready=True, now=0.0)
    assert not state.table.workers["w"].healthy  # no answer yet
    state.report_load("w", 4, now=1.0)
    assert state.table.workers["w"].healthy
    assert state.table.total_load == 4
    state.refresh(now=3.5)
    assert not state.table.workers["w"].healthy  # stale
    assert state.table.total_load == 0
    state.report_load("w", 1, now=4.0)
    state.report_failure("w", now=4.1)
    assert not state.table.workers["w"].healthy  # a request failed there
    state.report_load("w", 1, now=4.5)
    assert state.table.workers["w"].healthy


async def test_the_load_poller_takes_out_a_worker_whose_vllm_stops_answering(fleet: Any) -> None:
    state = fleet.state
    async with aiohttp.ClientSession() as session:
        poller = LoadPoller(state, session, interval=0.1)
        await poller.poll_once()
        assert state.table.workers["worker-0"].reported == 3
        assert state.table.workers["worker-0"].healthy
        await fleet.workers["worker-0"].vllm.close()
        await poller.poll_once()
    assert not state.table.workers["worker-0"].healthy
    assert state.table.workers["worker-1"].healthy


def test_a_request_the_worker_answers_keeps_it_alive_as_a_load_poll_does() -> None:
    state = new_state(stale_after=2.0)
    state.upsert_worker("w", "http://v", "http://a", ready=True, now=0.0)
    state.report_load("w", 4, now=0.0)
    state.report_answer("w", now=1.5)
    state.refresh(now=3.0)
    assert state.table.workers["w"].healthy  # no poll for 3 s, but it answered a request 1.5 s ago
    state.refresh(now=3.6)
    assert not state.table.workers["w"].healthy  # answered nothing for 2 s
    state.report_failure("w", now=3.7)
    state.report_answer("w", now=3.8)
    assert state.table.workers["w"].healthy


async def test_a_worker_too_busy_to_render_its_metrics_in_time_is_not_taken_out(fleet: Any) -> None:
    state = fleet.state
    async with aiohttp.ClientSession() as session:
        poller = LoadPoller(state, session, interval=0.1)  # each poll waits 0.2 s at most
        fleet.workers["worker-0"].metrics_seconds = 1.0
        await poller.poll_once()
    assert state.table.workers["worker-0"].healthy  # slow is not gone: staleness decides
    assert state.table.workers["worker-1"].healthy


async def test_the_proxy_reports_each_answer_of_a_worker(fleet: Any, monkeypatch: Any) -> None:
    answered: list[str] = []
    monkeypatch.setattr(fleet.state, "report_answer", lambda name, now: answered.append(name))
    body = {"model": "sql-gen", "prompt": "hi", "max_tokens": 4}
    headers = {"Authorization": "Bearer ignored"}
    url = f"{fleet.url}/v1/completions"
    async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=headers) as response:
        assert response.status == 200
        served = (await response.json())["choices"][0]["text"]
    assert [f"served by {name}" for name in answered] == [served]


async def test_static_mode_reads_residency_and_slots_from_the_agents(fleet: Any) -> None:
    state = new_state()
    workers = [StaticWorker(w.name, w.vllm_url, w.agent_url) for w in fleet.workers.values()]
    for worker in workers:
        state.upsert_worker(worker.name, worker.vllm_url, worker.agent_url, True, 0.0)
    async with aiohttp.ClientSession() as session:
        await StaticSource(state, session, workers).poll_once()
    assert state.table.holders("sql-gen") == {"worker-0": "GPU", "worker-1": "GPU"}
    assert state.table.holders("tail-1") == {"worker-0": "CPU", "worker-1": "CPU"}
    assert state.table.workers["worker-0"].gpu_slots == 4
    assert state.table.is_named("sql-gen")
    assert not state.table.is_named("tail-1")  # came through the catalog


def placement(worker: str, status: dict[str, Any], wanted: list[str], base: str = "llama") -> dict[str, Any]:
    return {
        "metadata": {"name": worker},
        "spec": {"baseModel": base, "worker": worker, "adapters": [{"name": n} for n in wanted]},
        "status": status,
    }


def worker_pod(name: str, ip: str = "10.0.0.7") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_workerplacement_events_set_residency_and_named_adapters() -> None:
    state = new_state()
    apply_pod(state, "ADDED", worker_pod("llama-worker-0"), 8000, 8080, now=0.0)
    status = {
        "adapters": [
            {"name": "sql-gen", "tier": "GPU", "sha256": "0" * 64},
            {"name": "user-7", "tier": "Disk", "catalog": True},
        ],
        "gpuSlots": 4,
        "cpuSlots": 12,
    }
    apply_placement(state, "ADDED", placement("llama-worker-0", status, ["sql-gen", "chat"]), "llama")
    assert state.table.holders("sql-gen") == {"llama-worker-0": "GPU"}
    assert state.table.holders("user-7") == {"llama-worker-0": "Disk"}
    assert state.table.is_named("chat")
    assert not state.table.is_named("user-7")
    assert state.revision("sql-gen") is None  # the spec gave no digest
    retrained = placement("llama-worker-0", status, [])
    retrained["spec"]["adapters"] = [{"name": "sql-gen", "sha256": "1" * 64}]
    apply_placement(state, "MODIFIED", retrained, "llama")
    assert state.revision("sql-gen") == "1" * 64  # what its placement asks for, not what is loaded
    assert state.copy_revision("llama-worker-0", "sql-gen") == "0" * 64  # what its copy is at
    assert state.copy_revision("llama-worker-0", "user-7") is None  # the report gave no digest
    state.note_copy("llama-worker-0", "sql-gen", "1" * 64)  # an ensure answered: reloaded
    assert state.copy_revision("llama-worker-0", "sql-gen") == "1" * 64
    apply_placement(state, "ADDED", placement("other-worker-0", status, ["x"], base="other"), "llama")
    assert "other-worker-0" not in state.table.workers
    apply_placement(state, "DELETED", placement("llama-worker-0", status, []), "llama")
    assert state.table.holders("sql-gen") == {}
    assert state.copy_revision("llama-worker-0", "sql-gen") is None
    assert not state.table.is_named("chat")
    assert state.revision("sql-gen") is None


def test_a_placement_without_a_pod_waits_for_it_and_never_brings_a_gone_worker_back() -> None:
    state = new_state()
    status = {"adapters": [{"name": "sql-gen", "tier": "GPU"}], "gpuSlots": 4, "cpuSlots": 12}
    apply_placement(state, "ADDED", placement("llama-worker-1", status, ["sql-gen"]), "llama")
    assert "llama-worker-1" not in state.table.workers  # listed before its pod: not routable yet
    apply_pod(state, "ADDED", worker_pod("llama-worker-1"), 8000, 8080, now=0.0)
    assert state.table.holders("sql-gen") == {"llama-worker-1": "GPU"}  # the kept report applies
    assert state.table.placed_on("sql-gen") == {"llama-worker-1"}
    apply_pod(state, "DELETED", worker_pod("llama-worker-1"), 8000, 8080, now=1.0)
    # Its WorkerPlacement changes once more, then goes: the worker stays gone.
    apply_placement(state, "MODIFIED", placement("llama-worker-1", {"adapters": []}, ["sql-gen"]), "llama")
    apply_placement(state, "DELETED", placement("llama-worker-1", {"adapters": []}, []), "llama")
    assert state.table.workers == {}
    assert "llama-worker-1" not in state.table.rendezvous.ranking("sql-gen")
    assert not state.table.is_named("sql-gen")


def test_pod_events_give_endpoints_and_readiness_and_remove_deleted_workers() -> None:
    state = new_state()
    pod = {
        "metadata": {"name": "llama-worker-0"},
        "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    apply_pod(state, "ADDED", pod, 8000, 8080, now=0.0)
    assert state.endpoints["llama-worker-0"].vllm_url == "http://10.0.0.7:8000"
    assert state.endpoints["llama-worker-0"].agent_url == "http://10.0.0.7:8080"
    state.report_load("llama-worker-0", 0, now=0.5)
    assert state.table.workers["llama-worker-0"].healthy
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    apply_pod(state, "MODIFIED", pod, 8000, 8080, now=1.0)
    assert not state.table.workers["llama-worker-0"].healthy
    apply_pod(state, "DELETED", pod, 8000, 8080, now=2.0)
    assert "llama-worker-0" not in state.table.workers


def lora_adapter(name: str, sha256: str, base: str = "llama") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"baseModel": base, "source": {"uri": "s3://a/b", "sha256": sha256}},
    }


def test_lora_adapter_events_name_the_adapters_of_this_base_model_placed_or_not() -> None:
    state = new_state()
    apply_adapter(state, "ADDED", lora_adapter("lazy", "1" * 64), "llama")  # replicas 0: on no placement
    apply_adapter(state, "ADDED", lora_adapter("theirs", "2" * 64, base="other"), "llama")
    assert state.table.is_named("lazy")
    assert not state.table.is_named("theirs")
    assert state.table.placed_on("lazy") == frozenset()
    assert state.revision("lazy") == "1" * 64
    assert state.adapters_served() == ["lazy"]
    apply_adapter(state, "MODIFIED", lora_adapter("lazy", "3" * 64), "llama")  # retrained
    assert state.revision("lazy") == "3" * 64  # the object's digest, before any placement catches up
    apply_adapter(state, "MODIFIED", lora_adapter("lazy", "3" * 64, base="other"), "llama")
    assert not state.table.is_named("lazy")
    apply_adapter(state, "ADDED", lora_adapter("lazy", "3" * 64), "llama")
    deleting = lora_adapter("lazy", "3" * 64)
    deleting["metadata"]["deletionTimestamp"] = "2026-11-23T00:00:00Z"  # its finalizer unloads it first
    apply_adapter(state, "MODIFIED", deleting, "llama")
    assert not state.table.is_named("lazy")  # no new copies of an adapter being deleted
    apply_adapter(state, "ADDED", lora_adapter("lazy", "3" * 64), "llama")
    apply_adapter(state, "DELETED", lora_adapter("lazy", "3" * 64), "llama")
    assert not state.table.is_named("lazy")
    assert state.revision("lazy") is None
