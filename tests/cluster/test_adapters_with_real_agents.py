"""The whole loop on the real control plane with a real agent and a real vLLM CPU engine.

The operator places LoRAAdapters on the BaseModel's (KWOK-simulated) worker
pod and writes its WorkerPlacement; a real `loraplex agent`, acting as that
pod with the worker ServiceAccount the operator made (bound to the chart's
loraplex-worker ClusterRole), loads the adapters into a real vLLM and reports
them; the operator turns the report into `Ready`. Deleting an adapter unloads
it before the object goes; a corrupted adapter shows the agent's reason.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.e2e.chart import chart_applied
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.service_account import service_account_kubeconfig
from loraplex.e2e.tiny_model import AdapterFiles
from loraplex.e2e.waiting import wait_until
from loraplex.e2e.worker_processes import AgentProcess, VllmProcess

pytestmark = [pytest.mark.cluster, pytest.mark.engine]
WORKER = "tiny-worker-0"


@pytest.fixture
def chart_rbac(local_cluster: LocalCluster, namespace: str) -> Iterator[None]:
    with chart_applied(local_cluster, namespace):
        yield


def adapter_status(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    try:
        body = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "loraadapters", name
        )
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return {"gone": True}
        raise
    status: dict[str, Any] = body.get("status", {})
    return status


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})


def when_ready(kube: Any, namespace: str, name: str, field: str, value: str) -> dict[str, Any] | None:
    """The adapter's status once its Ready condition has `field` == `value`."""
    status = adapter_status(kube, namespace, name)
    return status if ready(status).get(field) == value else None


def create_adapter(
    kube: Any, namespace: str, name: str, files: AdapterFiles, sha256: str | None = None, *,
    replicas: int = 1, base_model: str = "tiny",
) -> None:  # fmt: skip
    create_object(kube, namespace, "loraadapters", "LoRAAdapter", name, {
        "baseModel": base_model, "rank": files.rank, "replicas": replicas,
        "source": {"uri": f"file://{files.path}", "sha256": sha256 or files.sha256},
    })  # fmt: skip


@pytest.fixture
def start_agent(
    local_cluster: LocalCluster, kube: Any, namespace: str, chart_rbac: None, operator: OperatorProcess,
    vllm: VllmProcess, tmp_path: Path,
) -> Iterator[Callable[..., AgentProcess]]:  # fmt: skip
    """Starts the BaseModel `tiny` and a real agent (with the flags given) acting as its worker pod with
    the worker ServiceAccount, the operator running; stops the agent after the test."""
    started: list[AgentProcess] = []

    def start(*agent_args: str) -> AgentProcess:
        create_object(kube, namespace, "basemodels", "BaseModel", "tiny", {
            "model": {"uri": "/models/tiny"}, "replicas": {"min": 1},
            "engine": {"maxLoras": vllm.max_loras, "maxCpuLoras": vllm.max_cpu_loras, "maxLoraRank": 16},
        })  # fmt: skip
        core = client.CoreV1Api(kube)
        by_name = "metadata.name=tiny-worker"
        wait_until(lambda: core.list_namespaced_service_account(namespace, field_selector=by_name).items, 30,
                   "the worker ServiceAccount")  # fmt: skip
        worker_kubeconfig = service_account_kubeconfig(
            local_cluster.kubeconfig, namespace, "tiny-worker", tmp_path / "worker-kubeconfig.yaml"
        )
        started.append(AgentProcess(
            vllm, tmp_path / "cache", tmp_path / "agent.log",
            worker=WORKER, namespace=namespace, kubeconfig=worker_kubeconfig, base_model="tiny",
            extra_args=agent_args,
        ).start())  # fmt: skip
        return started[-1]

    yield start
    for agent in started:
        agent.stop()


def test_adapters_become_ready_on_a_real_worker_and_unload_on_delete(
    start_agent: Callable[..., AgentProcess],
    kube: Any,
    namespace: str,
    vllm: VllmProcess,
    adapters: dict[str, AdapterFiles],
) -> None:
    agent = start_agent()
    create_adapter(kube, namespace, "sql", adapters["a0"])
    create_adapter(kube, namespace, "chat", adapters["a1"])
    for name in ("sql", "chat"):
        status = wait_until(lambda name=name: when_ready(kube, namespace, name, "status", "True"), 120,
                            f"{name} Ready")  # fmt: skip
        assert status["placements"] == [{"worker": WORKER, "tier": "GPU"}]
        assert status["copies"] == "1/1"
    # Equal priority, the GPU slots taken: the newcomer gets the CPU tier, displacing neither.
    create_adapter(kube, namespace, "broken", adapters["a2"], sha256=adapters["a3"].sha256)
    assert vllm.adapters() == {"sql", "chat"}
    custom = client.CustomObjectsApi(kube)
    wait_until(
        lambda: (
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "basemodels", "tiny")
            .get("status", {})
            .get("slotsSummary")
            == "2/2"
        ),
        30,
        "the BaseModel counting the GPU slots the agent reports",
    )
    assert len({vllm.text("sql"), vllm.text("chat"), vllm.text("base")}) == 3

    broken = wait_until(lambda: when_ready(kube, namespace, "broken", "reason", "DigestMismatch"), 120,
                        "broken refused with the agent's reason")  # fmt: skip
    assert ready(broken)["status"] == "False"
    assert adapters["a3"].sha256 in ready(broken)["message"]

    placement = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "workerplacements", WORKER
    )
    assert {a["name"] for a in placement["status"]["adapters"]} == {"sql", "chat"}
    assert ready(placement["status"])["reason"] == "LoadFailed"

    client.CustomObjectsApi(kube).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "loraadapters", "sql"
    )
    wait_until(lambda: adapter_status(kube, namespace, "sql").get("gone"), 60, "sql deleted after unloading")
    assert "sql" not in vllm.adapters()
    assert "Forbidden" not in agent.log()


def test_a_named_adapter_this_worker_was_not_placed_with_loads_through_its_lora_adapter(
    start_agent: Callable[..., AgentProcess],
    kube: Any,
    namespace: str,
    vllm: VllmProcess,
    adapters: dict[str, AdapterFiles],
) -> None:
    # What the router does when a named adapter's placement is at the load bound: it asks another
    # worker's agent to load it, saying it is named; that agent reads its source from the LoRAAdapter.
    agent = start_agent()
    create_adapter(kube, namespace, "elsewhere", adapters["a0"], replicas=0)  # on no worker's placement
    create_adapter(kube, namespace, "foreign", adapters["a1"], replicas=0, base_model="other")
    assert agent.ensure("elsewhere")[0] == 404  # a catalog name as far as it knows, and there is no catalog
    status, body = agent.ensure("elsewhere", named=True)
    assert status == 200, body
    assert "elsewhere" in vllm.adapters()
    assert vllm.text("elsewhere") != vllm.text("base")
    assert agent.held()["elsewhere"] == "CPU"
    assert agent.ensure("foreign", named=True)[0] == 404  # another BaseModel's adapter
    assert agent.ensure("missing", named=True)[0] == 404
    assert "Forbidden" not in agent.log()
    # Deleting it unloads this copy too, though no WorkerPlacement lists it: the operator tells the agent
    # through `spec.unload`, and the unload finalizer waits for the agent's report.
    custom = client.CustomObjectsApi(kube)

    def reported_on_demand() -> bool:
        try:
            placement = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "workerplacements", WORKER
            )
        except client.exceptions.ApiException as error:
            if error.status == 404:  # the operator writes it on its next pass: nothing placed here yet
                return False
            raise
        held = (placement.get("status") or {}).get("adapters") or []
        return any(a["name"] == "elsewhere" and a.get("onDemand") for a in held)

    wait_until(reported_on_demand, 60, "the agent reporting its copy of elsewhere as loaded on demand")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "elsewhere")
    wait_until(lambda: adapter_status(kube, namespace, "elsewhere").get("gone"), 60,
               "elsewhere deleted after its copy was unloaded")  # fmt: skip
    assert "elsewhere" not in vllm.adapters()
    assert agent.ensure("elsewhere", named=True)[0] == 404


def active_reported(custom: client.CustomObjectsApi, namespace: str) -> set[str]:
    placement = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "workerplacements", WORKER)
    return {a["name"] for a in placement.get("status", {}).get("adapters", []) if a.get("active")}


def placed_tier(kube: Any, namespace: str, name: str) -> str:
    (placement,) = adapter_status(kube, namespace, name)["placements"]
    return str(placement["tier"])


@contextlib.contextmanager
def requests_for(vllm: VllmProcess, model: str) -> Iterator[None]:
    """A client sending requests for `model` to the worker's vLLM, one after another.

    Eight tokens each: vLLM records the adapters it runs after each engine step, so a one-token request
    (done in the step that scheduled it) would leave no trace.
    """
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            vllm.complete(model, max_tokens=8)
            stop.wait(0.3)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join(timeout=30)


def test_a_used_adapter_takes_the_gpu_slot_of_one_gone_idle(
    start_agent: Callable[..., AgentProcess],
    kube: Any,
    namespace: str,
    vllm: VllmProcess,
    adapters: dict[str, AdapterFiles],
) -> None:
    """vLLM's own record of what it ran, read by the agent, reaches the placement: no request log needed."""
    agent = start_agent("--active-window", "8", "--activity-interval", "1")
    custom = client.CustomObjectsApi(kube)
    for name, files in (("sql", adapters["a0"]), ("chat", adapters["a1"])):
        create_adapter(kube, namespace, name, files)
        wait_until(
            lambda name=name: when_ready(kube, namespace, name, "status", "True"), 120, f"{name} Ready"
        )
    create_adapter(kube, namespace, "news", adapters["a4"])
    news = wait_until(lambda: when_ready(kube, namespace, "news", "status", "True"), 120, "news Ready")
    assert news["placements"] == [{"worker": WORKER, "tier": "CPU"}]  # equal priority: it displaced none
    wait_until(lambda: not active_reported(custom, namespace), 60, "the window since the loads to pass")
    assert placed_tier(kube, namespace, "news") == "CPU"  # all idle: equal standing, nothing moved

    with requests_for(vllm, "news"):
        wait_until(lambda: placed_tier(kube, namespace, "news") == "GPU", 90, "news moved to a GPU slot")
        placement = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "workerplacements", WORKER)
        wanted = {a["name"]: a["tier"] for a in placement["spec"]["adapters"]}
        assert sorted(wanted.values()) == ["CPU", "GPU", "GPU"]
        (idle,) = (name for name, tier in wanted.items() if tier == "CPU")
        reported = {a["name"]: a.get("active") for a in placement["status"]["adapters"]}
        assert (reported["news"], reported[idle]) == (True, False)  # the CRD defaults it to false
        wait_until(lambda: agent.held().get("news") == "GPU", 30, "the agent warming news in a GPU slot")
