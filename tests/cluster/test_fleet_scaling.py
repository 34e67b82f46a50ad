"""Workers scale between replicas.min and max to hold the adapters warm, on the real control plane."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.api import GROUP, VERSION
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.waiting import wait_until

# A 2-second scale-down delay (300 s by default), so shrinking shows within the test.
pytestmark = [pytest.mark.cluster, pytest.mark.operator_env(LORAPLEX_SCALE_DOWN_DELAY="2")]


def fleet(kube: Any, namespace: str) -> tuple[int, str, list[str]] | None:
    """(StatefulSet replicas, BaseModel workers column, worker pods Running); None before the StatefulSet."""
    try:
        statefulset = client.AppsV1Api(kube).read_namespaced_stateful_set("tiny-worker", namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    replicas = statefulset.spec.replicas
    model = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", "tiny"
    )
    pods = client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector="loraplex.dev/base-model=tiny,app.kubernetes.io/component=worker"
    )
    running = sorted(
        p.metadata.name
        for p in pods.items
        if p.status.phase == "Running" and not p.metadata.deletion_timestamp
    )
    return replicas, model.get("status", {}).get("workers", ""), running


def create_adapter(kube: Any, namespace: str, name: str) -> None:
    create_object(
        kube, namespace, "loraadapters", "LoRAAdapter", name,
        {"baseModel": "tiny", "source": {"uri": f"s3://adapters/{name}/", "sha256": "a" * 64}, "rank": 8},
    )  # fmt: skip


def test_workers_grow_to_hold_the_adapters_warm_and_shrink_back_after_the_delay(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    # 2 warm slots per worker (maxCpuLoras), 1 to 3 workers.
    create_object(kube, namespace, "basemodels", "BaseModel", "tiny", {
        "model": {"uri": "/models/tiny"}, "replicas": {"min": 1, "max": 3},
        "engine": {"maxLoras": 1, "maxCpuLoras": 2},
    })  # fmt: skip
    one = (1, "1/1", ["tiny-worker-0"])
    wait_until(lambda: fleet(kube, namespace) == one, 60, "one worker")

    names = [f"adapter-{i}" for i in range(5)]
    for name in names:
        create_adapter(kube, namespace, name)
    three = (3, "3/3", ["tiny-worker-0", "tiny-worker-1", "tiny-worker-2"])
    wait_until(lambda: fleet(kube, namespace) == three, 60, "three workers for five warm copies")

    def copies_on_three_workers() -> bool:
        listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
            GROUP, VERSION, namespace, "workerplacements"
        )["items"]
        held = {p["spec"]["worker"]: len(p["spec"].get("adapters", [])) for p in listed}
        return len(held) == 3 and sum(held.values()) == 5 and max(held.values()) <= 2

    wait_until(copies_on_three_workers, 30, "the five copies spread over the three workers")

    def scaled_events() -> list[str]:
        events = client.CoreV1Api(kube).list_namespaced_event(namespace, field_selector="reason=Scaled")
        return [event.message for event in events.items if " -> 3: " in event.message]

    messages = wait_until(scaled_events, 30, "a Scaled event on the BaseModel")
    assert "the adapters want 5 warm copies" in messages[0]

    for name in names[1:]:
        client.CustomObjectsApi(kube).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "loraadapters", name
        )
    wait_until(lambda: fleet(kube, namespace) == one, 60, "back to one worker once the delay passed")
    scalings = operator.metrics()
    labels = f'base_model="tiny",direction="down",namespace="{namespace}"'  # /metrics sorts label names
    assert scalings[f"loraplex_fleet_scalings_total{{{labels}}}"] == 1


def test_kubectl_scale_sets_the_floor_and_is_bounded_by_max(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    create_object(kube, namespace, "basemodels", "BaseModel", "tiny", {
        "model": {"uri": "/models/tiny"}, "replicas": {"min": 1, "max": 3},
    })  # fmt: skip
    custom = client.CustomObjectsApi(kube)
    wait_until(lambda: fleet(kube, namespace) == (1, "1/1", ["tiny-worker-0"]), 60, "one worker")

    # What `kubectl scale bm/tiny --replicas=2` (or an HPA) does: the scale subresource.
    custom.patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, "basemodels", "tiny", {"spec": {"replicas": 2}}
    )
    two = (2, "2/2", ["tiny-worker-0", "tiny-worker-1"])
    wait_until(lambda: fleet(kube, namespace) == two, 60, "two workers after scaling the BaseModel")
    model = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "basemodels", "tiny")
    assert model["spec"]["replicas"] == {"min": 2, "max": 3}

    def scale_reads_ready() -> dict[str, Any] | None:
        scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, "basemodels", "tiny")
        return scale if scale["status"].get("replicas") == 2 else None

    scale = wait_until(scale_reads_ready, 30, "the scale subresource reporting two ready workers")
    assert scale["status"]["selector"] == "loraplex.dev/base-model=tiny,app.kubernetes.io/component=worker"

    # Above replicas.max the apiserver refuses, naming the field.
    with pytest.raises(ApiException) as refused:
        custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, "basemodels", "tiny", {"spec": {"replicas": 5}}
        )
    assert refused.value.status == 422
    assert "replicas.max must be at least replicas.min" in refused.value.body


def report_requests(kube: Any, namespace: str, worker: str, requests: float) -> None:
    """What the worker's agent writes into its WorkerPlacement's status: its request load."""
    client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "workerplacements", worker, {"status": {"requests": requests}}
    )


def test_workers_grow_with_the_requests_the_agents_report_and_shrink_back_after_the_delay(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    create_object(kube, namespace, "basemodels", "BaseModel", "tiny", {
        "model": {"uri": "/models/tiny"}, "replicas": {"min": 1, "max": 4, "targetRequestsPerWorker": 4},
    })  # fmt: skip
    one = (1, "1/1", ["tiny-worker-0"])
    wait_until(lambda: fleet(kube, namespace) == one, 60, "one worker")
    custom = client.CustomObjectsApi(kube)

    def placement_of(worker: str) -> dict[str, Any] | None:
        try:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "workerplacements", worker)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    first = wait_until(lambda: placement_of("tiny-worker-0"), 30, "the first worker's WorkerPlacement")
    assert first["spec"]["reportRequests"] is True  # its agent is asked for the load
    report_requests(kube, namespace, "tiny-worker-0", 5.0)  # a busy minute on the one worker
    two = (2, "2/2", ["tiny-worker-0", "tiny-worker-1"])
    wait_until(lambda: fleet(kube, namespace) == two, 60, "two workers for 5 requests at 4 a worker")

    wait_until(lambda: placement_of("tiny-worker-1"), 30, "the second worker's WorkerPlacement")
    report_requests(kube, namespace, "tiny-worker-1", 5.0)  # the load grew: 10 requests over two workers
    three = (3, "3/3", ["tiny-worker-0", "tiny-worker-1", "tiny-worker-2"])
    wait_until(lambda: fleet(kube, namespace) == three, 60, "three workers for 10 requests at 4 a worker")

    def scaled_events() -> list[str]:
        events = client.CoreV1Api(kube).list_namespaced_event(namespace, field_selector="reason=Scaled")
        return [event.message for event in events.items if " -> 3: " in event.message]

    messages = wait_until(scaled_events, 30, "a Scaled event on the BaseModel")
    assert "10 requests running or waiting, at most 4 per worker wanted" in messages[0]

    def shown_load() -> float | None:
        model = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "basemodels", "tiny")
        return model.get("status", {}).get("requests")

    wait_until(lambda: shown_load() == 10.0, 30, "the BaseModel showing the 10 requests")

    for worker in ("tiny-worker-0", "tiny-worker-1"):
        report_requests(kube, namespace, worker, 0.0)  # the load is gone
    wait_until(lambda: fleet(kube, namespace) == one, 60, "back to one worker once the delay passed")

    # A target of no requests per worker is refused at admission, naming the field.
    with pytest.raises(ApiException) as refused:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "basemodels",
            "tiny",
            {"spec": {"replicas": {"targetRequestsPerWorker": 0}}},
        )
    assert refused.value.status == 422
    assert "spec.replicas.targetRequestsPerWorker" in refused.value.body
