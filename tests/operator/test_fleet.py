"""The worker fleet built for a BaseModel: what vLLM is told, what pods request, who owns what."""

from __future__ import annotations

from typing import Any

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.labels import HASH_ANNOTATION
from loraplex.operator.fleet import BaseModelRef, api_key_secret, plan_fleet, router_deployment
from loraplex.operator.settings import OperatorSettings, default_priority

REF = BaseModelRef("llama-8b", "serving", "uid-1")
SETTINGS = OperatorSettings(image="loraplex:test")


def spec(**overrides: Any) -> BaseModelSpec:
    return BaseModelSpec.model_validate({"model": {"uri": "pvc://models/llama/8b"}, **overrides})


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


def containers(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = by_kind(manifests)["StatefulSet"]["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def test_fleet_has_workers_services_router_and_policy_all_owned_by_the_base_model() -> None:
    manifests = plan_fleet(REF, spec(), SETTINGS, 1)
    assert sorted(m["kind"] for m in manifests) == [
        "Deployment", "NetworkPolicy", "RoleBinding", "RoleBinding", "Service", "Service",
        "ServiceAccount", "ServiceAccount", "StatefulSet",
    ]  # fmt: skip
    for manifest in manifests:
        owner = manifest["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "BaseModel",
            "llama-8b",
            "uid-1",
            True,
        )
        assert manifest["metadata"]["namespace"] == "serving"


def test_agent_follows_its_worker_placement_with_the_engine_slots_catalog_and_store_keys() -> None:
    model = spec(
        engine={"maxLoras": 6, "maxCpuLoras": 24},
        adapterCatalog={"uriTemplate": "s3://adapters/users/{adapter}"},
        adapterStoreSecretRef={"name": "store-keys"},
    )
    manifests = plan_fleet(REF, model, SETTINGS, 1)
    agent = containers(manifests)["agent"]
    args = agent["args"]
    assert args[args.index("--max-loras") + 1] == "6"
    assert args[args.index("--max-cpu-loras") + 1] == "24"
    assert args[args.index("--catalog-template") + 1] == "s3://adapters/users/{adapter}"
    assert {e["name"] for e in agent["env"]} >= {"POD_NAME", "POD_NAMESPACE", "LORAPLEX_VLLM_API_KEY"}
    # Only the store keys it reads, each from the named Secret; never the whole Secret.
    assert "envFrom" not in agent
    store_keys = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in agent["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {k: v["name"] for k, v in store_keys.items() if k.startswith("AWS_")} == {
        key: "store-keys"
        for key in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_REGION",
        )
    }
    assert all(store_keys[key]["optional"] for key in store_keys if key.startswith("AWS_"))
    pod = by_kind(manifests)["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "llama-8b-worker"
    bindings = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "RoleBinding"}
    assert bindings["llama-8b-worker"]["roleRef"]["name"] == "loraplex-worker"
    assert bindings["llama-8b-worker"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "llama-8b-worker", "namespace": "serving"}
    ]
    assert bindings["llama-8b-router"]["roleRef"]["name"] == "loraplex-router"


def test_adapter_claims_are_mounted_read_only_into_the_agent_only() -> None:
    model = spec(
        adapterVolumes=["team-adapters"], adapterCatalog={"uriTemplate": "pvc://catalog/users/{adapter}"}
    )
    statefulset = by_kind(plan_fleet(REF, model, SETTINGS, 1))["StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    agent, vllm = containers([statefulset])["agent"], containers([statefulset])["vllm"]
    # pvc://<claim>/<path> is read by the agent at /mnt/pvc/<claim>/<path>.
    mounts = {m["name"]: m for m in agent["volumeMounts"] if m["mountPath"].startswith("/mnt/pvc/")}
    assert sorted(m["mountPath"] for m in mounts.values()) == ["/mnt/pvc/catalog", "/mnt/pvc/team-adapters"]
    assert all(m["readOnly"] for m in mounts.values())
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"] if v["name"] in mounts}
    assert sorted(c["claimName"] for c in claims.values()) == ["catalog", "team-adapters"]
    assert all(c["readOnly"] for c in claims.values())
    assert not any(m["name"] in mounts for m in vllm["volumeMounts"])  # vLLM reads the agent's cache


def test_vllm_gets_the_engine_settings_and_runtime_lora_loading() -> None:
    model = spec(engine={"maxLoras": 6, "maxCpuLoras": 24, "maxLoraRank": 64, "maxModelLen": 4096,
                         "args": ["--enable-prefix-caching"]})  # fmt: skip
    vllm = containers(plan_fleet(REF, model, SETTINGS, 1))["vllm"]
    args = vllm["args"]
    assert args[args.index("--max-loras") + 1] == "6"
    assert args[args.index("--max-cpu-loras") + 1] == "24"
    assert args[args.index("--max-lora-rank") + 1] == "64"
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert args[args.index("--model") + 1] == "/models/llama/8b"  # claim "models", path "llama/8b"
    assert "--enable-lora" in args
    assert args[-1] == "--enable-prefix-caching"
    env = {e["name"]: e for e in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "llama-8b-vllm-api-key",
        "key": "api-key",
    }


def test_workers_request_gpus_and_land_where_the_spec_says() -> None:
    model = spec(
        resources={"gpu": 2, "memory": "64Gi"},
        engine={"tensorParallelSize": 2},
        nodeSelector={"nvidia.com/gpu.product": "H100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        replicas={"min": 3, "max": 5},
    )
    statefulset = by_kind(plan_fleet(REF, model, SETTINGS, 4))["StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    assert statefulset["spec"]["replicas"] == 4  # the count the scaler decided
    assert containers(plan_fleet(REF, model, SETTINGS, 1))["vllm"]["resources"]["limits"] == {
        "nvidia.com/gpu": "2", "memory": "64Gi",
    }  # fmt: skip
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_workers_and_router_pull_with_the_secrets_the_spec_names_and_none_otherwise() -> None:
    secrets = [{"name": "regcred"}, {"name": "mirror"}]
    manifests = by_kind(plan_fleet(REF, spec(imagePullSecrets=secrets), SETTINGS, 1))
    for kind in ("StatefulSet", "Deployment"):
        assert manifests[kind]["spec"]["template"]["spec"]["imagePullSecrets"] == secrets
    plain = by_kind(plan_fleet(REF, spec(), SETTINGS, 1))
    for kind in ("StatefulSet", "Deployment"):
        assert "imagePullSecrets" not in plain[kind]["spec"]["template"]["spec"]


def test_model_from_a_store_is_fetched_before_vllm_starts() -> None:
    pod = by_kind(plan_fleet(REF, spec(model={"uri": "s3://models/llama-8b/"}), SETTINGS, 1))["StatefulSet"]
    init = pod["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"][:2] == ["agent", "fetch-model"]
    assert "s3://models/llama-8b/" in init["args"]
    keyed = spec(model={"uri": "s3://models/llama-8b/"}, adapterStoreSecretRef={"name": "store-keys"})
    init = by_kind(plan_fleet(REF, keyed, SETTINGS, 1))["StatefulSet"]["spec"]["template"]["spec"]
    fetch = init["initContainers"][0]
    assert "envFrom" not in fetch  # the store keys it reads, not the whole Secret
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in fetch["env"]} == {
        "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
    }  # fmt: skip


def test_user_api_key_secret_replaces_the_generated_one() -> None:
    model = spec(engine={"apiKeySecretRef": {"name": "vllm-keys", "key": "llama"}})
    for container in containers(plan_fleet(REF, model, SETTINGS, 1)).values():
        refs = [
            e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        ]
        assert refs == [{"name": "vllm-keys", "key": "llama"}]


def test_content_hash_moves_only_with_what_it_describes() -> None:
    first = {m["kind"] + m["metadata"]["name"]: m for m in plan_fleet(REF, spec(), SETTINGS, 1)}
    again = {m["kind"] + m["metadata"]["name"]: m for m in plan_fleet(REF, spec(), SETTINGS, 1)}
    changed = {
        m["kind"] + m["metadata"]["name"]: m
        for m in plan_fleet(REF, spec(engine={"maxLoras": 8}), SETTINGS, 1)
    }
    hashes = {k: m["metadata"]["annotations"][HASH_ANNOTATION] for k, m in first.items()}
    assert hashes == {k: m["metadata"]["annotations"][HASH_ANNOTATION] for k, m in again.items()}
    moved = [k for k, m in changed.items() if m["metadata"]["annotations"][HASH_ANNOTATION] != hashes[k]]
    assert moved == ["StatefulSetllama-8b-worker"]


def test_generated_api_key_secret_holds_the_given_key() -> None:
    secret = api_key_secret(REF, "s3cret")
    assert secret["stringData"] == {"api-key": "s3cret"}
    assert secret["metadata"]["ownerReferences"][0]["name"] == "llama-8b"


def test_replicas_get_distinct_peering_priorities() -> None:
    priorities = {default_priority(f"loraplex-operator-{i}") for i in range(50)}
    assert len(priorities) == 50
    assert OperatorSettings.from_env({"POD_NAME": "a"}).peering_priority == default_priority("a")


def test_router_knows_the_name_clients_use_for_the_base_model() -> None:
    named = spec(model={"uri": "pvc://models/llama/8b", "servedName": "meta-llama/Llama-3-8B"})
    for model, expected in ((spec(), "llama-8b"), (named, "meta-llama/Llama-3-8B")):
        router = by_kind(plan_fleet(REF, model, SETTINGS, 1))["Deployment"]["spec"]["template"]["spec"]
        args = router["containers"][0]["args"]
        assert args[args.index("--served-model-name") + 1] == expected
        assert router["serviceAccountName"] == "llama-8b-router"


def test_the_router_deployment_runs_a_command_line_the_router_accepts() -> None:
    import argparse

    from loraplex.router.main import configure, settings_from_args

    container = router_deployment(REF, spec(), SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "router"
    parser = argparse.ArgumentParser(exit_on_error=False)
    configure(parser)
    settings = settings_from_args(parser.parse_args(container["args"][1:]))  # an unknown flag raises
    assert (settings.base_model, settings.namespace, settings.port) == ("llama-8b", "serving", 8000)
    assert not settings.static


def test_every_vllm_flag_the_operator_sets_is_one_engine_args_may_not_set() -> None:
    from loraplex.api.basemodel import MANAGED_ENGINE_FLAGS
    from loraplex.operator.fleet import vllm_args

    spec = BaseModelSpec.model_validate({"model": {"uri": "/m"}, "engine": {"maxModelLen": 2048}})
    flags = [arg.removeprefix("--") for arg in vllm_args(REF, spec, "/m") if arg.startswith("--")]
    assert sorted(set(flags) - set(MANAGED_ENGINE_FLAGS)) == []


def test_a_failing_worker_container_leaves_its_last_log_lines_for_the_status_to_quote() -> None:
    pod = by_kind(plan_fleet(REF, spec(model={"uri": "s3://models/llama-8b/"}), SETTINGS, 1))["StatefulSet"]
    template = pod["spec"]["template"]["spec"]
    every = [*template["initContainers"], *template["containers"]]
    assert [c["name"] for c in every] == ["fetch-model", "vllm", "agent"]
    assert {c["terminationMessagePolicy"] for c in every} == {"FallbackToLogsOnError"}
