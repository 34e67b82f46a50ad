"""The operator places LoRAAdapters onto workers through WorkerPlacements, on the real control plane."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from loraplex.api import GROUP, VERSION
from loraplex.api.tiers import TIERS
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.waiting import wait_until

pytestmark = pytest.mark.cluster


def adapter_spec(name: str, **extra: Any) -> dict[str, Any]:
    source = {"uri": f"s3://adapters/{name}/", "sha256": f"{len(name):064x}"}
    return {"baseModel": "tiny", "source": source, "rank": 8, **extra}


def placements(kube: Any, namespace: str) -> dict[str, dict[str, str]]:
    """adapter -> worker -> tier, as the WorkerPlacement objects hold it."""
    listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "workerplacements"
    )
    held: dict[str, dict[str, str]] = {}
    for item in listed["items"]:
        for entry in item["spec"]["adapters"]:
            held.setdefault(entry["name"], {})[item["spec"]["worker"]] = entry["tier"]
    return held


WANTED = {"sql": 2, "chat": 1, "code": 1, "docs": 1, "math": 1}


def placed(kube: Any, namespace: str, workers: set[str]) -> dict[str, dict[str, str]] | None:
    held = placements(kube, namespace)
    complete = {name: len(held.get(name, {})) for name in WANTED} == WANTED
    within = all(set(where) <= workers for where in held.values())
    return held if complete and within else None


def copies_by_tier(operator: OperatorProcess, namespace: str, base_model: str) -> dict[str, float]:
    samples = operator.metrics()
    labels = f'base_model="{base_model}",namespace="{namespace}"'  # /metrics sorts label names
    return {
        tier: samples.get(f'loraplex_adapter_copies{{{labels},tier="{tier}"}}', -1)
        for tier in ("GPU", "CPU", "Disk")
    }


def test_adapters_are_placed_in_tiers_and_wait_for_agents(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    create_object(kube, namespace, "basemodels", "BaseModel", "tiny", {
        "model": {"uri": "/models/tiny"}, "replicas": {"min": 3}, "engine": {"maxLoras": 1, "maxCpuLoras": 2},
    })  # fmt: skip
    create_object(
        kube,
        namespace,
        "loraadapters",
        "LoRAAdapter",
        "sql",
        adapter_spec("sql", replicas=2, policy="Pinned"),
    )
    for name in ("chat", "code", "docs", "math"):
        create_object(kube, namespace, "loraadapters", "LoRAAdapter", name, adapter_spec(name))
    workers = {f"tiny-worker-{i}" for i in range(3)}
    held = wait_until(lambda: placed(kube, namespace, workers), 60, "every adapter copy placed")
    samples = operator.metrics()
    assert samples.get('loraplex_reconciles_total{kind="LoRAAdapter",result="ok"}') == len(WANTED)
    assert samples.get('loraplex_reconcile_duration_seconds_count{kind="LoRAAdapter",result="ok"}') == len(
        WANTED
    )
    assert samples.get('loraplex_reconcile_duration_seconds_count{kind="BaseModel",result="ok"}', 0) >= 1
    assert (
        samples.get('loraplex_api_writes_total{resource="BaseModel",verb="patch-status"}', 0) >= 1
    )  # via kopf
    assert samples["loraplex_planner_duration_seconds_count"] >= 1
    assert samples["loraplex_placement_pass_duration_seconds_count"] >= 1
    per_tier = Counter(tier for where in held.values() for tier in where.values())
    wait_until(
        lambda: copies_by_tier(operator, namespace, "tiny") == {str(t): per_tier[t] for t in TIERS},
        10,
        "/metrics counting the copies per tier",
    )
    assert operator.metrics()[f'loraplex_adapters_pending{{base_model="tiny",namespace="{namespace}"}}'] == 0
    assert set(held["sql"].values()) == {"GPU"}  # pinned: GPU slots on two distinct workers
    gpu_copies = [w for where in held.values() for w, tier in where.items() if tier == "GPU"]
    assert len(gpu_copies) <= 3  # one GPU slot per worker (maxLoras 1)

    def sql_loading() -> dict[str, Any] | None:
        body: dict[str, Any] = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "loraadapters", "sql"
        )
        ready = next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
        return body if ready.get("reason") == "Loading" else None

    # No agent reports residency yet, so no copy counts as loaded.
    body = wait_until(sql_loading, 30, "sql reported Loading")
    status = body["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], status["copies"], status["phase"]) == ("False", "0/2", "Loading")
    # `kubectl get --show-managed-fields` names the operator as the status's writer.
    status_writers = {
        m["manager"] for m in body["metadata"]["managedFields"] if m.get("subresource") == "status"
    }
    assert status_writers == {"loraplex-operator"}


def three_workers_five_adapters(kube: Any, namespace: str) -> None:
    """A BaseModel of 3 workers (2 GPU and 2 CPU slots each) and 5 adapters, `sql` with 2 replicas."""
    create_object(kube, namespace, "basemodels", "BaseModel", "tiny", {
        "model": {"uri": "/models/tiny"}, "replicas": {"min": 3}, "engine": {"maxLoras": 2, "maxCpuLoras": 4},
    })  # fmt: skip
    create_object(kube, namespace, "loraadapters", "LoRAAdapter", "sql", adapter_spec("sql", replicas=2))
    for name in ("chat", "code", "docs", "math"):
        create_object(kube, namespace, "loraadapters", "LoRAAdapter", name, adapter_spec(name))


def test_scaling_in_re_places_the_removed_workers_copies(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    three_workers_five_adapters(kube, namespace)
    before = wait_until(lambda: placed(kube, namespace, {f"tiny-worker-{i}" for i in range(3)}), 60, "placed")
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "tiny", {"spec": {"replicas": {"min": 2}}}
    )
    survivors = {"tiny-worker-0", "tiny-worker-1"}
    after = wait_until(lambda: placed(kube, namespace, survivors), 60, "copies of the lost worker re-placed")
    kept = [name for name, where in before.items() if "tiny-worker-2" not in where]
    assert all(set(after[name]) == set(before[name]) for name in kept)  # nothing else changed worker
    assert len(after["sql"]) == 2


@contextmanager
def gpu_nodes_cordoned(kube: Any) -> Iterator[None]:
    """No new pod lands on a GPU node meanwhile (`kubectl cordon`); running pods stay."""
    core = client.CoreV1Api(kube)
    nodes = [n.metadata.name for n in core.list_node(label_selector="loraplex.dev/gpu-node=true").items]
    try:
        for node in nodes:
            core.patch_node(node, {"spec": {"unschedulable": True}})
        yield
    finally:
        for node in nodes:
            core.patch_node(node, {"spec": {"unschedulable": None}})


def pod_uid(kube: Any, namespace: str, name: str) -> str | None:
    try:
        uid: str = client.CoreV1Api(kube).read_namespaced_pod(name, namespace).metadata.uid
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise
    return uid


def worker_placement_names(kube: Any, namespace: str) -> set[str]:
    listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "workerplacements"
    )
    return {item["metadata"]["name"] for item in listed["items"]}


def ready_reasons(kube: Any, namespace: str) -> dict[str, str]:
    """adapter -> its Ready condition's reason, as the operator last wrote it."""
    listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "loraadapters"
    )
    reasons = {}
    for item in listed["items"]:
        conditions = (item.get("status") or {}).get("conditions", [])
        ready = next((c for c in conditions if c["type"] == "Ready"), {})
        reasons[item["metadata"]["name"]] = ready.get("reason", "")
    return reasons


def all_loading(kube: Any, namespace: str) -> dict[str, str] | None:
    """The Ready reasons once every adapter is Loading: all its copies placed, none reported loaded."""
    reasons = ready_reasons(kube, namespace)
    return reasons if set(reasons.values()) == {"Loading"} else None


def test_a_worker_pod_that_disappears_has_its_copies_re_placed_on_the_others(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    # The StatefulSet brings a deleted pod back under the same name, but a real one is not Ready for
    # minutes (vLLM starting): with the GPU nodes cordoned, the simulated one stays Pending as long.
    three_workers_five_adapters(kube, namespace)
    workers = {f"tiny-worker-{i}" for i in range(3)}
    before = wait_until(lambda: placed(kube, namespace, workers), 60, "every adapter copy placed")
    copies = {worker: [name for name, where in before.items() if worker in where] for worker in workers}
    lost = max(sorted(workers), key=lambda worker: len(copies[worker]))  # the worker holding the most
    survivors = workers - {lost}
    old_uid = pod_uid(kube, namespace, lost)
    with gpu_nodes_cordoned(kube):
        client.CoreV1Api(kube).delete_namespaced_pod(lost, namespace)
        deleted = time.monotonic()
        after = wait_until(lambda: placed(kube, namespace, survivors), 30, f"copies of {lost} re-placed")
        took = time.monotonic() - deleted
        print(f"worker_loss_re_placed_seconds={took:.1f} copies_lost={len(copies[lost])}")
        # What a user sees while the pod is away: every adapter has its replicas on the other workers
        # (`kubectl get workerplacements`), copies that lived elsewhere did not move, the lost worker's
        # WorkerPlacement is gone, and no adapter waits for workers or capacity.
        assert {name: len(where) for name, where in after.items()} == WANTED
        assert all(set(after[name]) == set(before[name]) for name in WANTED if name not in copies[lost])
        assert all(set(after[name]) >= set(before[name]) - {lost} for name in copies[lost])
        wait_until(
            lambda: lost not in worker_placement_names(kube, namespace), 30, f"{lost}'s placement gone"
        )
        reasons = wait_until(lambda: all_loading(kube, namespace), 30, "every adapter's copies placed")
        assert sorted(reasons) == sorted(WANTED)
        assert pod_uid(kube, namespace, lost) not in (None, old_uid)  # its replacement, still Pending
    # The pod comes back Ready under its old name: a worker like any other, no adapter over its replicas.
    wait_until(lambda: lost in worker_placement_names(kube, namespace), 60, f"{lost} back with a placement")
    final = wait_until(lambda: placed(kube, namespace, workers), 30, "copies placed once the worker is back")
    assert {name: len(where) for name, where in final.items()} == WANTED


BATCH = {f"batch-{i:02d}": 2 if i % 3 == 0 else 1 for i in range(30)}  # adapter -> replicas


def adapters_placed_in_status(kube: Any, namespace: str) -> dict[str, dict[str, Any]]:
    """adapter -> the adapter, for those whose status the placement loop has written."""
    listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "loraadapters"
    )
    return {
        item["metadata"]["name"]: item
        for item in listed["items"]
        if "placements" in (item.get("status") or {})
    }


def kill_on_first_placed_status(kube: Any, namespace: str, operator: OperatorProcess) -> threading.Event:
    """SIGKILL the operator as soon as a watch shows the first adapter status its placement loop wrote."""
    killed = threading.Event()
    custom = client.CustomObjectsApi(kube)

    def watch_and_kill() -> None:
        stream = watch.Watch()
        for event in stream.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "loraadapters",
            timeout_seconds=120,
        ):
            if "placements" in (event["object"].get("status") or {}):
                operator.stop(signal.SIGKILL)
                killed.set()
                stream.stop()

    threading.Thread(target=watch_and_kill, daemon=True).start()
    return killed


def resumed(kube: Any, namespace: str) -> dict[str, dict[str, Any]] | None:
    """Every adapter of the batch with its status written and its replicas in the WorkerPlacements."""
    statuses = adapters_placed_in_status(kube, namespace)
    held = placements(kube, namespace)
    complete = {name: len(held.get(name, {})) for name in BATCH} == BATCH
    return statuses if complete and set(statuses) == set(BATCH) else None


# One status write at a time: a wider window to kill it in. The pod's name as kopf's peer identity (the
# chart sets POD_ID), and a peering lifetime longer than the test waits for the successor.
RESTARTED_POD = {
    "LORAPLEX_STATUS_WRITERS": "1",
    "POD_ID": "loraplex-operator-0",
    "LORAPLEX_PEERING_LIFETIME": "120",
}


@pytest.mark.operator_env(**RESTARTED_POD)
def test_an_operator_killed_mid_placement_resumes_with_nothing_lost(
    local_cluster: LocalCluster, kube: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    create_object(kube, namespace, "basemodels", "BaseModel", "tiny", {
        "model": {"uri": "/models/tiny"}, "replicas": {"min": 3}, "engine": {"maxLoras": 2, "maxCpuLoras": 4},
    })  # fmt: skip
    workers = {f"tiny-worker-{i}" for i in range(3)}
    wait_until(lambda: worker_placement_names(kube, namespace) == workers, 60, "the three workers up")
    killed = kill_on_first_placed_status(kube, namespace, operator)
    for name, replicas in BATCH.items():
        create_object(
            kube, namespace, "loraadapters", "LoRAAdapter", name, adapter_spec(name, replicas=replicas)
        )
    wait_until(killed.is_set, 60, "the operator killed mid-placement")
    at_kill, held_at_kill = adapters_placed_in_status(kube, namespace), placements(kube, namespace)
    print(
        f"statuses_at_kill={len(at_kill)} adapters_in_placements_at_kill={len(held_at_kill)} of={len(BATCH)}"
    )
    assert 0 < len(at_kill) < len(BATCH)  # killed mid-way: some statuses written, not all
    # The same pod's container restarted: same identity, same priority. It resumes at once, though the
    # killed one's peering entry lives on for 120 s (a stranger of equal priority would wait that out).
    again = OperatorProcess(
        local_cluster.kubeconfig, namespace, tmp_path / "again.log", extra_env=RESTARTED_POD
    ).start()
    restarted = time.monotonic()
    try:
        adapters = wait_until(lambda: resumed(kube, namespace), 60, "every adapter placed after the restart")
    finally:
        again.stop()
    print(f"converged_after_restart_seconds={time.monotonic() - restarted:.1f}")
    held = placements(kube, namespace)
    listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "workerplacements"
    )
    entries = [entry["name"] for item in listed["items"] for entry in item["spec"]["adapters"]]
    assert len(entries) == sum(BATCH.values())  # no adapter on more workers than its replicas, none twice
    assert set().union(*(set(where) for where in held.values())) <= workers
    # Every copy placed before the kill stayed on its worker, in its tier: the new operator adopted the
    # WorkerPlacements as they stood (no re-ranking of adapters of equal priority).
    moved = {
        name: (where, held[name])
        for name, where in held_at_kill.items()
        if not where.items() <= held[name].items()
    }
    assert moved == {}
    for name, body in adapters.items():
        status = body["status"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        # The status agrees with the WorkerPlacements: all copies placed, none reported loaded yet.
        assert (ready["reason"], status["copies"], status["observedGeneration"]) == (
            "Loading",
            f"0/{BATCH[name]}",
            1,
        ), name
        assert f"{GROUP}/unload" in body["metadata"]["finalizers"]


def two_worker_base_model(kube: Any, namespace: str) -> None:
    create_object(
        kube,
        namespace,
        "basemodels",
        "BaseModel",
        "tiny",
        {"model": {"uri": "/models/tiny"}, "replicas": {"min": 2}},
    )


def test_deleting_an_adapter_unloads_it_everywhere_first(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    two_worker_base_model(kube, namespace)
    create_object(kube, namespace, "loraadapters", "LoRAAdapter", "chat", adapter_spec("chat", replicas=2))
    wait_until(lambda: len(placements(kube, namespace).get("chat", {})) == 2, 60, "chat placed twice")
    custom = client.CustomObjectsApi(kube)
    body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "chat")
    assert body["metadata"]["finalizers"] == [f"{GROUP}/unload"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "chat")

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "chat")
        except client.exceptions.ApiException as error:
            return error.status == 404
        return False

    wait_until(gone, 60, "chat deleted after it left every worker")
    assert "chat" not in placements(kube, namespace)


def test_deleting_a_base_model_with_its_adapters_lets_them_all_go(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    # As `kubectl delete -f examples/` does: the BaseModel first, its adapters right after.
    two_worker_base_model(kube, namespace)
    for name, replicas in (("chat", 2), ("code", 1)):
        create_object(
            kube, namespace, "loraadapters", "LoRAAdapter", name, adapter_spec(name, replicas=replicas)
        )
    wait_until(
        lambda: {k: len(v) for k, v in placements(kube, namespace).items()} == {"chat": 2, "code": 1},
        60,
        "chat and code placed",
    )
    custom = client.CustomObjectsApi(kube)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "basemodels", "tiny")
    for name in ("chat", "code"):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", name)

    def left() -> list[str]:
        return [
            f"{plural}/{item['metadata']['name']}"
            for plural in ("basemodels", "loraadapters", "workerplacements")
            for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
        ]

    try:
        wait_until(lambda: not left(), 60, "BaseModel, adapters and WorkerPlacements gone")
    except TimeoutError as error:
        raise AssertionError(f"still there after 60s: {left()}") from error
