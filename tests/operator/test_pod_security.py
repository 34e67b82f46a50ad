"""Every pod the operator writes passes the restricted Pod Security Standard and can run on a real kubelet.

Worker (with and without the init container that fetches the model), router
and trainer pods: run as uid 65532 with the runtime's seccomp profile and no
capabilities, request cpu and memory in every container, probe the engine,
agent and router, give vLLM a writable home and a sized /dev/shm, and mount a
ServiceAccount token only where a container calls the API.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.fleet import BaseModelRef, plan_fleet
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_workload import TrainingJobRef, plan_attempt
from tests.restricted_pods import all_containers, restricted_violations

REF = BaseModelRef("llama-8b", "serving", "uid-1")
JOB = TrainingJobRef("sql-tune", "serving", "uid-2", 1)
SETTINGS = OperatorSettings(
    image="loraplex:test", trainer_image="loraplex-trainer:test", training_dataset_roots=("pvc://datasets",)
)
PVC_MODEL = {"model": {"uri": "pvc://models/llama/8b"}}
HTTPS_MODEL = {"model": {"uri": "https://models.example.com/llama-8b.tar"}}
TRAINING = {
    "baseModel": "llama-8b",
    "dataset": {"uri": "pvc://datasets/sql/train.jsonl"},
    "output": {"adapterName": "sql"},
    "training": {"steps": 10},
}


def base(**fields: Any) -> BaseModelSpec:
    return BaseModelSpec.model_validate({**PVC_MODEL, **fields})


def fleet_pods(spec: BaseModelSpec, settings: OperatorSettings = SETTINGS) -> dict[str, dict[str, Any]]:
    """The worker and router pod specs of a BaseModel's fleet."""
    manifests = {m["kind"]: m for m in plan_fleet(REF, spec, settings, 2)}
    return {
        "worker": manifests["StatefulSet"]["spec"]["template"]["spec"],
        "router": manifests["Deployment"]["spec"]["template"]["spec"],
    }


def trainer_pod(
    spec: BaseModelSpec, training: dict[str, Any] = TRAINING, settings: OperatorSettings = SETTINGS
) -> dict[str, Any]:
    job = TrainingJobSpec.model_validate(training)
    _, attempt = plan_attempt(JOB, job, spec, settings, attempt=0, node="gpu-1")
    pod: dict[str, Any] = attempt["spec"]["template"]["spec"]
    return pod


def every_pod() -> dict[str, dict[str, Any]]:
    with_fetch = BaseModelSpec.model_validate(
        {**HTTPS_MODEL, "adapterVolumes": ["team"], "adapterStoreSecretRef": {"name": "keys"}}
    )
    return {
        "worker": fleet_pods(base())["worker"],
        "worker-fetching-its-model": fleet_pods(with_fetch)["worker"],
        "router": fleet_pods(base())["router"],
        "trainer": trainer_pod(base()),
        "trainer-fetching-its-model": trainer_pod(with_fetch),
    }


PODS = every_pod()


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in all_containers(pod)}


def test_the_fetching_pods_do_have_an_init_container() -> None:
    assert [c["name"] for c in PODS["worker-fetching-its-model"]["initContainers"]] == ["fetch-model"]
    assert [c["name"] for c in PODS["trainer-fetching-its-model"]["initContainers"]] == ["fetch-model"]


@pytest.mark.parametrize("name", sorted(PODS))
def test_every_pod_passes_the_restricted_standard(name: str) -> None:
    pod = PODS[name]
    assert restricted_violations(pod) == []
    context = pod["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (65532, 65532, 65532)
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in all_containers(pod):
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }


@pytest.mark.parametrize(
    ("breach", "violation"),
    [
        (lambda pod: pod.update(hostNetwork=True), "hostNetwork"),
        (lambda pod: pod.update(hostPID=True), "hostPID"),
        (lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (lambda pod: pod["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda pod: pod["securityContext"].update(runAsUser=0), "runAsUser 0"),
        (lambda pod: pod["securityContext"].pop("seccompProfile"), "seccompProfile"),
        (lambda pod: pod["securityContext"].update(seccompProfile={"type": "Unconfined"}), "Unconfined"),
        (lambda pod: pod["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (lambda pod: pod["containers"][0].pop("securityContext"), "allowPrivilegeEscalation"),
        (lambda pod: pod["containers"][0]["securityContext"].pop("capabilities"), "drop ALL"),
        (lambda pod: pod["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
         "SYS_ADMIN"),
        (lambda pod: pod["containers"][0]["ports"][0].update(hostPort=8000), "hostPort"),
    ],
)  # fmt: skip
def test_the_checker_catches_what_the_restricted_standard_refuses(breach: Any, violation: str) -> None:
    pod = copy.deepcopy(PODS["worker"])
    breach(pod)
    assert any(violation in found for found in restricted_violations(pod))


def test_the_checker_lets_a_container_bind_low_ports() -> None:
    pod = copy.deepcopy(PODS["router"])
    pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert restricted_violations(pod) == []


@pytest.mark.parametrize("name", sorted(PODS))
def test_every_container_requests_cpu_and_memory_and_pulls_only_when_missing(name: str) -> None:
    for container in all_containers(PODS[name]):
        requests = container["resources"]["requests"]
        assert isinstance(requests.get("cpu"), str), container["name"]
        assert isinstance(requests.get("memory"), str), container["name"]
        assert container["imagePullPolicy"] == "IfNotPresent"


def test_the_containers_beside_the_model_get_the_settings_resources() -> None:
    pods = fleet_pods(BaseModelSpec.model_validate(HTTPS_MODEL))
    worker = containers(pods["worker"])
    expected = {
        "agent": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "fetch-model": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
    }
    assert {name: worker[name]["resources"] for name in expected} == expected
    assert containers(pods["router"])["router"]["resources"] == {
        "requests": {"cpu": "200m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    settings = OperatorSettings.from_env(
        {"POD_NAME": "a", "LORAPLEX_AGENT_CPU_REQUEST": "250m", "LORAPLEX_ROUTER_MEMORY_LIMIT": "3Gi"}
    )
    tuned = fleet_pods(base(), settings)
    assert containers(tuned["worker"])["agent"]["resources"]["requests"]["cpu"] == "250m"
    assert containers(tuned["router"])["router"]["resources"]["limits"] == {"memory": "3Gi"}


def test_the_model_containers_request_the_spec_or_the_defaults() -> None:
    engine = containers(fleet_pods(base())["worker"])["vllm"]["resources"]
    assert engine == {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"nvidia.com/gpu": "1"}}
    sized = base(resources={"gpu": 2, "cpu": "8", "memory": "64Gi"}, engine={"tensorParallelSize": 2})
    assert containers(fleet_pods(sized)["worker"])["vllm"]["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"nvidia.com/gpu": "2", "memory": "64Gi"},
    }
    trainer = containers(trainer_pod(base()))["trainer"]["resources"]
    assert trainer == {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"nvidia.com/gpu": "1"}}
    cpu_only = {**TRAINING, "resources": {"gpu": 0, "cpu": "2", "memory": "8Gi"}}
    assert containers(trainer_pod(base(), cpu_only))["trainer"]["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "8Gi"},
    }


@pytest.mark.parametrize(
    ("pod", "container", "path", "port"),
    [("worker", "vllm", "/health", 8000), ("worker", "agent", "/healthz", 8080),
     ("router", "router", "/healthz", 8000)],
)  # fmt: skip
def test_engine_agent_and_router_are_probed_and_a_slow_start_is_not_killed(
    pod: str, container: str, path: str, port: int
) -> None:
    probed = containers(PODS[pod])[container]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probed[probe]["httpGet"] == {"path": path, "port": port}, probe


def test_the_engine_gets_twenty_minutes_and_more_to_load_its_model() -> None:
    startup = containers(PODS["worker"])["vllm"]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60


@pytest.mark.parametrize(("fields", "size"), [({}, "2Gi"), ({"engine": {"shmSize": "16Gi"}}, "16Gi")])
def test_vllm_gets_an_in_memory_dev_shm_of_the_base_models_size(fields: dict[str, Any], size: str) -> None:
    pod = fleet_pods(base(**fields))["worker"]
    (mount,) = [m for m in containers(pod)["vllm"]["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": size}


@pytest.mark.parametrize(("pod", "container"), [("worker", "vllm"), ("trainer", "trainer")])
def test_the_engine_and_the_trainer_have_a_writable_home(pod: str, container: str) -> None:
    home_of = containers(PODS[pod])[container]
    env = {e["name"]: e.get("value") for e in home_of["env"]}
    (mount,) = [m for m in home_of["volumeMounts"] if m["mountPath"] == env["HOME"]]
    assert env["XDG_CACHE_HOME"].startswith(env["HOME"] + "/")
    assert {"name": mount["name"], "emptyDir": {}} in PODS[pod]["volumes"]


def token_holders(pod: dict[str, Any]) -> list[str]:
    """The containers that get the pod's ServiceAccount token: all if the kubelet mounts it, else
    those mounting a projected token volume at the place API clients read it."""
    if pod["automountServiceAccountToken"]:
        return [c["name"] for c in all_containers(pod)]
    projected = {v["name"]: v.get("projected", {}).get("sources", []) for v in pod["volumes"]}
    tokens = {name for name, sources in projected.items() if any("serviceAccountToken" in s for s in sources)}
    return [
        c["name"]
        for c in all_containers(pod)
        for m in c.get("volumeMounts", [])
        if m["name"] in tokens and m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    ]


def test_only_containers_that_call_the_api_get_a_service_account_token() -> None:
    accounts = [m for m in plan_fleet(REF, base(), SETTINGS, 1) if m["kind"] == "ServiceAccount"]
    assert sorted(a["metadata"]["name"] for a in accounts) == ["llama-8b-router", "llama-8b-worker"]
    assert all(a["automountServiceAccountToken"] is False for a in accounts)
    # The agent watches its WorkerPlacement, the router the fleet; vLLM (which runs the model's code),
    # fetch-model and the trainer call no API at all (the operator reads the trainer's log).
    holders = {name: token_holders(pod) for name, pod in PODS.items()}
    assert holders == {
        "worker": ["agent"], "worker-fetching-its-model": ["agent"], "router": ["router"],
        "trainer": [], "trainer-fetching-its-model": [],
    }  # fmt: skip
    (token,) = [v for v in PODS["worker"]["volumes"] if v["name"] == "agent-api-access"]
    sources = {key for source in token["projected"]["sources"] for key in source}
    assert sources == {"serviceAccountToken", "configMap", "downwardAPI"}  # token, CA, namespace
