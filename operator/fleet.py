"""Builds the Kubernetes objects that serve one BaseModel: pure functions of the spec.

A BaseModel becomes a worker StatefulSet (stable pod names, so placements
survive restarts) whose pods run vLLM's OpenAI server with runtime LoRA
loading plus the loraplex agent, a headless Service for the workers, the
router Deployment and Service, a NetworkPolicy that lets only the router and
the operator reach the workers, and, when the spec names none, a Secret with
the vLLM API key. Every object carries an owner reference to the BaseModel and
a hash of its own content, so applying skips objects that did not change.

Every pod passes the `restricted` Pod Security Standard (see pod_security),
every container requests cpu and memory, and the long-running ones have
startup, liveness and readiness probes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from loraplex.api import API_VERSION
from loraplex.api.access import RouterAccess
from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.common import DEFAULT_MODEL_CPU, DEFAULT_MODEL_MEMORY
from loraplex.api.labels import BASE_MODEL_LABEL, COMPONENT_LABEL, HASH_ANNOTATION, MANAGED_BY, ROUTER, WORKER
from loraplex.api.trainer import STORE_CREDENTIAL_KEYS
from loraplex.operator.pod_security import restricted, service_account_token, writable_home
from loraplex.operator.pod_volumes import merge_claim_volumes
from loraplex.operator.settings import OperatorSettings

Manifest = dict[str, Any]

VLLM_PORT = 8000
AGENT_PORT = 8080
ROUTER_PORT = 8000
MODEL_MOUNT = "/models"
ADAPTER_CACHE = "/var/cache/loraplex"
AGENT_PVC_ROOT = "/mnt/pvc"  # the agent's --pvc-root default: pvc://<claim>/<path> is <root>/<claim>/<path>
API_KEY_DEFAULT_KEY = "api-key"
ENGINE_HOME = "/home/engine"  # vLLM's HOME and caches: its image expects root's, the pod runs as 65532
SHM_MOUNT = "/dev/shm"
PULL_POLICY = "IfNotPresent"  # images imported into the nodes are used as they are
FETCH_MODEL_CONTAINER = "fetch-model"  # the init container that copies the base model into the pod
# A worker container that fails leaves its log's last lines as its termination message, which the
# BaseModel's Ready condition quotes (fleet_status): the cause without `kubectl logs --previous`.
TERMINATION_MESSAGE = {"terminationMessagePolicy": "FallbackToLogsOnError"}
ENGINE_STARTUP_SECONDS = 30 * 60  # loading a large model (and compiling its graphs) is slow
AGENT_STARTUP_SECONDS = 2 * 60
ROUTER_STARTUP_SECONDS = 5 * 60  # its first sync lists every adapter of the BaseModel
ROUTER_API_KEYS = "/etc/loraplex/api-keys"  # each API-key Secret is mounted in a folder of its name here


@dataclass(frozen=True)
class BaseModelRef:
    """Identity of the BaseModel that owns the fleet."""

    name: str
    namespace: str
    uid: str


def worker_name(ref: BaseModelRef) -> str:
    return f"{ref.name}-worker"


def workers_service_name(ref: BaseModelRef) -> str:
    return f"{ref.name}-workers"


def router_name(ref: BaseModelRef) -> str:
    return f"{ref.name}-router"


def api_key_secret_name(ref: BaseModelRef) -> str:
    return f"{ref.name}-vllm-api-key"


def api_key_ref(ref: BaseModelRef, spec: BaseModelSpec) -> tuple[str, str]:
    """(Secret name, key) holding the vLLM API key: the user's, or the one the operator creates."""
    if spec.engine.api_key_secret_ref is not None:
        return spec.engine.api_key_secret_ref.name, spec.engine.api_key_secret_ref.key
    return api_key_secret_name(ref), API_KEY_DEFAULT_KEY


def labels(ref: BaseModelRef, component: str) -> dict[str, str]:
    return {**MANAGED_BY, BASE_MODEL_LABEL: ref.name, COMPONENT_LABEL: component}


def selector(ref: BaseModelRef, component: str) -> dict[str, str]:
    return {BASE_MODEL_LABEL: ref.name, COMPONENT_LABEL: component}


def worker_selector(base_model: str) -> str:
    """The worker pods' label selector as a string (the BaseModel scale subresource's selector)."""
    return f"{BASE_MODEL_LABEL}={base_model},{COMPONENT_LABEL}={WORKER}"


def plan_fleet(
    ref: BaseModelRef, spec: BaseModelSpec, settings: OperatorSettings, workers: int
) -> list[Manifest]:
    """Every object of the fleet except the generated API key Secret (see `api_key_secret`).

    `workers` is the worker count to run (see fleet_scale).
    """
    return [
        *(owned_by(ref, service_account(ref, component)) for component in (WORKER, ROUTER)),
        *(owned_by(ref, role_binding(ref, component)) for component in (WORKER, ROUTER)),
        owned_by(ref, worker_statefulset(ref, spec, settings, workers)),
        owned_by(ref, workers_service(ref)),
        owned_by(ref, router_deployment(ref, spec, settings)),
        owned_by(ref, router_service(ref)),
        owned_by(ref, network_policy(ref, settings)),
    ]


def model_location(spec: BaseModelSpec) -> tuple[str, list[Manifest], list[Manifest]]:
    """The path vLLM loads, with the volumes and mounts that make it exist."""
    uri = spec.model.uri
    if uri.startswith("pvc://"):
        claim, path = pvc_parts(uri)
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
        return f"{MODEL_MOUNT}/{path}".rstrip("/"), [volume], [mount]
    if uri.startswith(("s3://", "https://")):
        volume = {"name": "model", "emptyDir": {}}
        mount = {"name": "model", "mountPath": MODEL_MOUNT}
        return MODEL_MOUNT, [volume], [mount]
    return uri, [], []


def vllm_args(ref: BaseModelRef, spec: BaseModelSpec, model_path: str) -> list[str]:
    engine = spec.engine
    args = [
        "--model", model_path,
        "--served-model-name", spec.model.served_name or ref.name,
        "--host", "0.0.0.0",
        "--port", str(VLLM_PORT),
        "--enable-lora",
        "--max-loras", str(engine.max_loras),
        "--max-cpu-loras", str(engine.max_cpu_loras),
        "--max-lora-rank", str(engine.max_lora_rank),
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
    ]  # fmt: skip
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    return args + list(engine.args)


def http_probes(path: str, port: int, startup_seconds: int) -> Manifest:
    """Startup, liveness and readiness probes on one HTTP path.

    The startup probe gives the container `startup_seconds` to answer once; liveness (a restart after
    a minute without an answer) starts only after that, so a slow start is never killed.
    """
    check = {"httpGet": {"path": path, "port": port}, "timeoutSeconds": 5}
    return {
        "startupProbe": {**check, "periodSeconds": 5, "failureThreshold": -(-startup_seconds // 5)},
        "livenessProbe": {**check, "periodSeconds": 10, "failureThreshold": 6},
        "readinessProbe": {**check, "periodSeconds": 5},
    }


def model_resources(accelerator: str, count: int, cpu: str | None, memory: str | None) -> Manifest:
    """`resources` of a container that runs a model (vLLM, the trainer): its accelerators, and cpu and
    memory requests, the defaults where the spec names none; a memory limit only when it names one."""
    limits = {accelerator: str(count)} if count else {}
    if memory:
        limits["memory"] = memory
    requests = {"cpu": cpu or DEFAULT_MODEL_CPU, "memory": memory or DEFAULT_MODEL_MEMORY}
    return {"requests": requests, **({"limits": limits} if limits else {})}


def _api_key_env(ref: BaseModelRef, spec: BaseModelSpec, variable: str) -> Manifest:
    secret, key = api_key_ref(ref, spec)
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def pvc_parts(uri: str) -> tuple[str, str]:
    """(claim, path inside it) of a `pvc://<claim>/<path>` URI."""
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, path


def adapter_claims(spec: BaseModelSpec) -> list[str]:
    """The PersistentVolumeClaims whose adapters the agents read: spec.adapterVolumes and the catalog's."""
    claims = set(spec.adapter_volumes)
    template = spec.adapter_catalog.uri_template if spec.adapter_catalog is not None else ""
    if template.startswith("pvc://"):
        claim, _ = pvc_parts(template)
        if "{" not in claim:
            claims.add(claim)
    return sorted(claims)


def adapter_volumes(spec: BaseModelSpec) -> tuple[list[Manifest], list[Manifest]]:
    """Pod volumes and agent mounts for the adapter claims, at <pvc root>/<claim>, read-only."""
    volumes, mounts = [], []
    for index, claim in enumerate(adapter_claims(spec)):
        name = f"adapters-{index}"
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": f"{AGENT_PVC_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def agent_args(ref: BaseModelRef, spec: BaseModelSpec) -> list[str]:
    engine = spec.engine
    args = [
        "agent",
        "--base-model", ref.name,
        "--vllm-url", f"http://127.0.0.1:{VLLM_PORT}",
        "--cache-dir", ADAPTER_CACHE,
        "--port", str(AGENT_PORT),
        "--max-loras", str(engine.max_loras),
        "--max-cpu-loras", str(engine.max_cpu_loras),
    ]  # fmt: skip
    if spec.adapter_catalog is not None:
        args += ["--catalog-template", spec.adapter_catalog.uri_template]
    return args


def pull_secrets(spec: BaseModelSpec) -> Manifest:
    """The `imagePullSecrets` of a pod the operator runs for this BaseModel (none when it names none)."""
    if not spec.image_pull_secrets:
        return {}
    return {"imagePullSecrets": [{"name": secret.name} for secret in spec.image_pull_secrets]}


def fetch_model_containers(
    spec: BaseModelSpec, settings: OperatorSettings, mounts: list[Manifest]
) -> list[Manifest]:
    """The init container that copies the base model from an object store or HTTPS, when it lives there."""
    if not spec.model.uri.startswith(("s3://", "https://")):
        return []
    return [
        {
            "name": FETCH_MODEL_CONTAINER,
            "image": settings.image,
            "imagePullPolicy": PULL_POLICY,
            "args": ["agent", "fetch-model", "--uri", spec.model.uri, "--dest", MODEL_MOUNT],
            "volumeMounts": mounts,
            "env": store_credential_env(spec),
            "resources": settings.fetch_model_resources.manifest(),
            **TERMINATION_MESSAGE,
        }
    ]


def store_credential_env(spec: BaseModelSpec) -> list[Manifest]:
    """The adapter store's S3 keys (`STORE_CREDENTIAL_KEYS`) from the BaseModel's Secret, if it names
    one, as environment variables: those keys only (a key the Secret lacks is left unset), never the
    whole Secret."""
    ref = spec.adapter_store_secret_ref
    if ref is None:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key, "optional": True}}}
        for key in STORE_CREDENTIAL_KEYS
    ]


def service_account(ref: BaseModelRef, component: str) -> Manifest:
    """A component's ServiceAccount. It mounts no token by default: each pod that calls the API says so."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": f"{ref.name}-{component}",
            "namespace": ref.namespace,
            "labels": labels(ref, component),
        },
        "automountServiceAccountToken": False,
    }


def role_binding(ref: BaseModelRef, component: str) -> Manifest:
    """Binds a component's ServiceAccount to its chart ClusterRole (loraplex-worker, -router, -trainer)."""
    name = f"{ref.name}-{component}"
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": ref.namespace, "labels": labels(ref, component)},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": f"loraplex-{component}",
        },
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ref.namespace}],
    }


def worker_statefulset(
    ref: BaseModelRef, spec: BaseModelSpec, settings: OperatorSettings, workers: int
) -> Manifest:
    model_path, volumes, mounts = model_location(spec)
    resources = spec.resources
    cache_mount = {"name": "adapter-cache", "mountPath": ADAPTER_CACHE}
    home_volume, home_mount, home_env = writable_home("engine-home", ENGINE_HOME)
    shm_volume = {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.engine.shm_size}}
    vllm = {
        "name": "vllm",
        "image": spec.engine.image,
        "imagePullPolicy": PULL_POLICY,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(ref, spec, model_path),
        "env": [
            _api_key_env(ref, spec, "VLLM_API_KEY"),
            {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            *home_env,
        ],
        "ports": [{"name": "vllm", "containerPort": VLLM_PORT}],
        **http_probes("/health", VLLM_PORT, ENGINE_STARTUP_SECONDS),
        "resources": model_resources(
            resources.gpu_resource_name, resources.gpu, resources.cpu, resources.memory
        ),
        "volumeMounts": [*mounts, cache_mount, home_mount, {"name": "shm", "mountPath": SHM_MOUNT}],
        **TERMINATION_MESSAGE,
    }
    claim_volumes, claim_mounts = adapter_volumes(spec)
    # Only the agent calls the API server: vLLM runs the model's code and fetch-model reads what the
    # spec names, so neither holds the token that reads and writes the namespace's WorkerPlacements.
    token_volume, token_mount = service_account_token("agent-api-access")
    agent = {
        "name": "agent",
        "image": settings.image,
        "imagePullPolicy": PULL_POLICY,
        # The agent reads the base model's weight names (not the weights) to refuse adapters whose
        # target modules it lacks (TargetModulesNotInBase); a model inside the vLLM image it cannot see.
        "args": agent_args(ref, spec) + (["--base-model-dir", model_path] if mounts else []),
        "env": [
            _api_key_env(ref, spec, "LORAPLEX_VLLM_API_KEY"),
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            *store_credential_env(spec),
        ],
        "ports": [{"name": "agent", "containerPort": AGENT_PORT}],
        **http_probes("/healthz", AGENT_PORT, AGENT_STARTUP_SECONDS),
        "resources": settings.agent_resources.manifest(),
        "volumeMounts": [
            cache_mount,
            *claim_mounts,
            *({**m, "readOnly": True} for m in mounts),
            token_mount,
        ],
        **TERMINATION_MESSAGE,
    }
    init_containers = fetch_model_containers(spec, settings, mounts)
    pod_spec: Manifest = {
        "serviceAccountName": worker_name(ref),
        "automountServiceAccountToken": False,  # the agent alone mounts it (token_volume)
        "containers": [vllm, agent],
        "volumes": [
            *volumes,
            token_volume,
            {"name": "adapter-cache", "emptyDir": {}},
            home_volume,
            shm_volume,
            *claim_volumes,
        ],
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations],
        **pull_secrets(spec),
        "affinity": _spread_over_nodes(ref),
        "terminationGracePeriodSeconds": 60,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    restricted(merge_claim_volumes(pod_spec))
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": worker_name(ref), "namespace": ref.namespace, "labels": labels(ref, WORKER)},
        "spec": {
            "replicas": workers,
            "serviceName": workers_service_name(ref),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(ref, WORKER)},
            "template": {"metadata": {"labels": labels(ref, WORKER)}, "spec": pod_spec},
        },
    }


def _spread_over_nodes(ref: BaseModelRef) -> Manifest:
    term = {"labelSelector": {"matchLabels": selector(ref, WORKER)}}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {**term, "topologyKey": "kubernetes.io/hostname"}},
                {"weight": 50, "podAffinityTerm": {**term, "topologyKey": "topology.kubernetes.io/zone"}},
            ]
        }
    }


def workers_service(ref: BaseModelRef) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": workers_service_name(ref),
            "namespace": ref.namespace,
            "labels": labels(ref, WORKER),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector(ref, WORKER),
            "ports": [
                {"name": "vllm", "port": VLLM_PORT, "targetPort": VLLM_PORT},
                {"name": "agent", "port": AGENT_PORT, "targetPort": AGENT_PORT},
            ],
        },
    }


def router_deployment(ref: BaseModelRef, spec: BaseModelSpec, settings: OperatorSettings) -> Manifest:
    container = {
        "name": "router",
        "image": settings.image,
        "imagePullPolicy": PULL_POLICY,
        "args": [
            "router",
            "--base-model",
            ref.name,
            "--served-model-name",
            spec.model.served_name or ref.name,
            "--namespace",
            ref.namespace,
            "--port",
            str(ROUTER_PORT),
        ],
        "env": [_api_key_env(ref, spec, "LORAPLEX_VLLM_API_KEY"), *router_engine_env(spec)],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT}],
        **http_probes("/healthz", ROUTER_PORT, ROUTER_STARTUP_SECONDS),
        "resources": settings.router_resources.manifest(),
    }
    args, env, volumes, mounts = router_access(spec)
    container["args"] += args
    container["env"] += env + router_quotas(spec, settings)
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec = {
        "serviceAccountName": f"{ref.name}-router",
        "automountServiceAccountToken": True,  # it watches WorkerPlacements, LoRAAdapters and pods
        **pull_secrets(spec),
        "containers": [container],
        **({"volumes": volumes} if volumes else {}),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": router_name(ref), "namespace": ref.namespace, "labels": labels(ref, ROUTER)},
        "spec": {
            "replicas": settings.router_replicas,
            "selector": {"matchLabels": selector(ref, ROUTER)},
            "template": {
                "metadata": {"labels": labels(ref, ROUTER)},
                "spec": restricted(pod_spec),
            },
        },
    }


def router_engine_env(spec: BaseModelSpec) -> list[Manifest]:
    """The engines' concurrency, where `engine.args` sets `--max-num-seqs` (else the router learns it
    from each vLLM's metrics)."""
    args = list(spec.engine.args)
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--max-num-seqs" and i + 1 < len(args) else None
        if arg.startswith("--max-num-seqs="):
            value = arg.partition("=")[2]
        if value is not None and value.isdigit():
            return [{"name": "LORAPLEX_ROUTER_MAX_NUM_SEQS", "value": value}]
    return []


def router_quotas(spec: BaseModelSpec, settings: OperatorSettings) -> list[Manifest]:
    """The router's quotas (`spec.quotas`) and how many replicas share them: each replica enforces
    ceil(limit / replicas) of every budget on its own, so no store is shared between them."""
    if spec.quotas is None:
        return []
    return [
        {
            "name": "LORAPLEX_ROUTER_QUOTAS",
            "value": spec.quotas.model_dump_json(by_alias=True, exclude_none=True),
        },
        {"name": "LORAPLEX_ROUTER_REPLICAS", "value": str(settings.router_replicas)},
    ]


def router_access(spec: BaseModelSpec) -> tuple[list[str], list[Manifest], list[Manifest], list[Manifest]]:
    """The router's authentication and access settings from `spec.access`: (args, env, volumes, mounts).

    Each API-key Secret is mounted read-only at ROUTER_API_KEYS/<secret> (the kubelet refreshes the
    files when the Secret changes; the router re-reads them, no restart and no RBAC on Secrets); OIDC
    settings are flags; who may use the base model and the catalog goes in LORAPLEX_ROUTER_ACCESS."""
    access = spec.access
    if access is None:
        return [], [], [], []
    args: list[str] = []
    volumes: list[Manifest] = []
    mounts: list[Manifest] = []
    authentication = access.authentication
    if authentication is not None and authentication.api_keys is not None:
        for index, secret in enumerate(authentication.api_keys.secret_names):
            volume, path = f"api-keys-{index}", f"{ROUTER_API_KEYS}/{secret}"
            volumes.append({"name": volume, "secret": {"secretName": secret}})
            mounts.append({"name": volume, "mountPath": path, "readOnly": True})
            args += ["--api-keys-dir", path]
    if authentication is not None and authentication.oidc is not None:
        oidc = authentication.oidc
        args += ["--oidc-issuer", oidc.issuer]
        for audience in oidc.audiences:
            args += ["--oidc-audience", audience]
        if oidc.jwks_uri:
            args += ["--oidc-jwks-uri", oidc.jwks_uri]
        args += ["--oidc-subject-claim", oidc.subject_claim, "--oidc-groups-claim", oidc.groups_claim]
    env = []
    if access.base_model is not None or access.catalog is not None:
        rules = RouterAccess(base_model=access.base_model, catalog=access.catalog)
        value = rules.model_dump_json(by_alias=True, exclude_none=True)
        env.append({"name": "LORAPLEX_ROUTER_ACCESS", "value": value})
    return args, env, volumes, mounts


def router_service(ref: BaseModelRef) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": router_name(ref), "namespace": ref.namespace, "labels": labels(ref, ROUTER)},
        "spec": {
            "selector": selector(ref, ROUTER),
            "ports": [{"name": "http", "port": 80, "targetPort": ROUTER_PORT}],
        },
    }


def network_policy(ref: BaseModelRef, settings: OperatorSettings) -> Manifest:
    """Only the router reaches vLLM; only the router and the operator reach the agent.

    The settings' metrics scraper (Prometheus) reaches both ports too, for their /metrics. A
    NetworkPolicy cannot filter by path: vLLM's API still asks for its key, and on the agent's
    the scraper could at most ask for one of this BaseModel's adapters to be loaded.
    """
    router = {"podSelector": {"matchLabels": selector(ref, ROUTER)}}
    operator = {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "loraplex-operator"}},
    }
    scraper = settings.metrics_scraper
    scrapers = (
        [{"namespaceSelector": dict(scraper.namespace_selector), "podSelector": dict(scraper.pod_selector)}]
        if scraper is not None
        else []
    )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": worker_name(ref), "namespace": ref.namespace, "labels": labels(ref, WORKER)},
        "spec": {
            "podSelector": {"matchLabels": selector(ref, WORKER)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [router, *scrapers], "ports": [{"port": VLLM_PORT}]},
                {"from": [router, operator, *scrapers], "ports": [{"port": AGENT_PORT}]},
            ],
        },
    }


def api_key_secret(ref: BaseModelRef, api_key: str) -> Manifest:
    """The Secret with a generated vLLM API key (the caller makes the key: this stays pure)."""
    return owned_by(
        ref,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": api_key_secret_name(ref),
                "namespace": ref.namespace,
                "labels": labels(ref, WORKER),
            },
            "type": "Opaque",
            "stringData": {API_KEY_DEFAULT_KEY: api_key},
        },
    )


def owned_by(ref: BaseModelRef, manifest: Manifest) -> Manifest:
    """Add the BaseModel as owner, and the content hash the apply step compares."""
    return owned(manifest, "BaseModel", ref.name, ref.uid)


def owned(manifest: Manifest, kind: str, name: str, uid: str) -> Manifest:
    """Add a controller owner reference to a loraplex object, and the content hash the apply step compares."""
    manifest["metadata"]["ownerReferences"] = [
        {"apiVersion": API_VERSION, "kind": kind, "name": name, "uid": uid, "controller": True,
         "blockOwnerDeletion": True}
    ]  # fmt: skip
    manifest["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = content_hash(manifest)
    return manifest


def content_hash(manifest: Manifest) -> str:
    body = {k: v for k, v in manifest.items() if k != "metadata"}
    body["labels"] = manifest["metadata"].get("labels", {})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
