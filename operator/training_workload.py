"""Builds what one attempt of a TrainingJob runs: pure functions of the spec, the BaseModel and settings.

An attempt is a batch/v1 Job (one pod, `backoffLimit: 0`, owned by the
TrainingJob) running `loraplex trainer --config /etc/loraplex/trainer.yaml`
from a ConfigMap of the same name, at the low `loraplex-trainer`
PriorityClass so the scheduler preempts it when serving needs the GPUs. The
trainer config follows worker/trainer/config.py: the job's dataset, lora,
training and checkpoint settings copied as they are, the base model where the
pod mounts it, and checkpoints and outputs in the training store
(`LORAPLEX_TRAINING_STORE`), under a folder per TrainingJob uid and
generation (and scheduled run) so every attempt of one run resumes the same checkpoint.

Operator-admitted attempts are pinned to their node
(`kubernetes.io/hostname`); attempts of a job that names a Kueue LocalQueue
are created suspended with the queue label, and Kueue unsuspends them.

The trainer runs in its own image (`LORAPLEX_TRAINER_IMAGE`); the init
container that fetches a base model from a store runs the operator's image.
The pod passes the `restricted` Pod Security Standard (see pod_security).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from loraplex.api import API_VERSION
from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.labels import (
    ATTEMPT_LABEL,
    BASE_MODEL_LABEL,
    COMPONENT_LABEL,
    MANAGED_BY,
    TRAINER,
    TRAINING_JOB_LABEL,
)
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.fleet import (
    PULL_POLICY,
    BaseModelRef,
    Manifest,
    fetch_model_containers,
    model_location,
    model_resources,
    owned,
    owned_by,
    pvc_parts,
    role_binding,
    service_account,
    store_credentials,
)
from loraplex.operator.pod_security import restricted, writable_home
from loraplex.operator.pod_volumes import merge_claim_volumes
from loraplex.operator.settings import OperatorSettings

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
HOSTNAME_LABEL = "kubernetes.io/hostname"
TRAINER_CONTAINER = "trainer"
CONFIG_DIR = "/etc/loraplex"
CONFIG_FILE = "trainer.yaml"
STORE_MOUNT = "/store"
DATA_MOUNT = "/data"
TERMINATION_LOG = "/dev/termination-log"
TRAINER_HOME = "/home/trainer"  # HOME and caches (Hugging Face, Triton) of the trainer, as uid 65532
GRACE_PERIOD_SECONDS = 25  # the trainer's own deadline for its final checkpoint after SIGTERM
POD_GRACE_PERIOD_SECONDS = 45  # above the trainer's, so its final checkpoint is not cut short


@dataclass(frozen=True)
class TrainingJobRef:
    """Identity of the TrainingJob that owns an attempt."""

    name: str
    namespace: str
    uid: str
    generation: int
    run: int = 0  # the scheduled run (spec.schedule); 0 for the first run of a generation


@dataclass(frozen=True)
class Store:
    """Where checkpoints and published adapters live, inside the pod and as workers fetch them."""

    local_root: str  # file:///store/<path>, file:///<path> or s3://<bucket>/<prefix>
    public_root: str  # pvc://<claim>/<path>, file:///<path> or s3://<bucket>/<prefix>
    claim: str | None

    @classmethod
    def parse(cls, uri: str) -> Store:
        if uri.startswith("pvc://"):
            claim, path = pvc_parts(uri)
            path = path.strip("/")
            local = f"file://{STORE_MOUNT}" + (f"/{path}" if path else "")
            return cls(local, f"pvc://{claim}" + (f"/{path}" if path else ""), claim)
        if uri.startswith("file:///") or uri.startswith("s3://"):
            root = uri.rstrip("/")
            return cls(root, root, None)  # s3://: the trainer uploads with the store Secret's AWS_* keys
        raise ValueError(
            f"training store {uri!r}: use pvc://<claim>/<path>, s3://<bucket>/<prefix> or file:///<path>"
        )

    def public(self, local_uri: str) -> str:
        """The URI workers use for a path the trainer wrote (file:///store/... -> pvc://claim/...)."""
        if local_uri.startswith(self.local_root):
            return self.public_root + local_uri[len(self.local_root) :]
        return local_uri


def attempt_name(ref: TrainingJobRef, attempt: int) -> str:
    """The Job (and ConfigMap) of one attempt: `<name>-a<attempt>` (`<name>-r<run>-a<attempt>` in a
    scheduled rerun), at most 63 characters."""
    suffix = f"-r{ref.run}-a{attempt}" if ref.run else f"-a{attempt}"
    name = ref.name + suffix
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(ref.name.encode()).hexdigest()[:8]
    return f"{ref.name[: 63 - len(suffix) - 9]}-{digest}{suffix}"


def service_account_name(base_model: str) -> str:
    return f"{base_model}-trainer"


def checkpoint_uri(ref: TrainingJobRef, store: Store, local: bool = True) -> str:
    """The folder the trainer checkpoints this spec's adapter under (its `<checkpointUri>/<name>/`).

    One per generation and scheduled run, so a rerun never resumes the finished run's checkpoint.
    """
    root = store.local_root if local else store.public_root
    run = f"-r{ref.run}" if ref.run else ""
    return f"{root}/checkpoints/{ref.namespace}/{ref.uid}/g{ref.generation}{run}"


def output_uri(ref: TrainingJobRef, spec: TrainingJobSpec, store: Store) -> str:
    return f"{store.local_root}/adapters/{ref.namespace}/{spec.output.adapter_name}"


def _dataset(uri: str) -> tuple[str, list[Manifest], list[Manifest]]:
    """The dataset URI the trainer reads, with the volume that makes a pvc:// one local."""
    if uri.startswith("pvc://"):
        claim, path = pvc_parts(uri)
        volume = {"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "data", "mountPath": DATA_MOUNT, "readOnly": True}
        return f"file://{DATA_MOUNT}/{path}".rstrip("/"), [volume], [mount]
    return uri, [], []


def trainer_config(
    ref: TrainingJobRef, spec: TrainingJobSpec, base: BaseModelSpec, store: Store
) -> dict[str, Any]:
    """The trainer's config file (worker/trainer/config.py, camelCase) for this job."""
    model_path, _, _ = model_location(base)
    dataset_uri, _, _ = _dataset(spec.dataset.uri)
    dataset = spec.dataset.model_dump(by_alias=True, exclude_none=True) | {"uri": dataset_uri}
    return {
        "baseModel": model_path,
        "checkpointUri": checkpoint_uri(ref, store),
        "adapters": [
            {
                "name": ref.name,
                "dataset": dataset,
                "lora": spec.lora.model_dump(by_alias=True, exclude_none=True),
                "training": spec.training.model_dump(by_alias=True, exclude_none=True),
                "checkpoint": spec.checkpoint.model_dump(by_alias=True, exclude_none=True),
                "outputUri": output_uri(ref, spec, store),
            }
        ],
        "gracePeriodSeconds": GRACE_PERIOD_SECONDS,
        "resultPath": TERMINATION_LOG,
    }


def labels(ref: TrainingJobRef, base_model: str, attempt: int) -> dict[str, str]:
    return {
        **MANAGED_BY,
        BASE_MODEL_LABEL: base_model,
        COMPONENT_LABEL: TRAINER,
        TRAINING_JOB_LABEL: ref.name,
        ATTEMPT_LABEL: str(attempt),
    }


def plan_attempt(
    ref: TrainingJobRef,
    spec: TrainingJobSpec,
    base: BaseModelSpec,
    settings: OperatorSettings,
    attempt: int,
    node: str | None,
) -> list[Manifest]:
    """The ConfigMap and Job of one attempt; `node` None: left to Kueue (created suspended)."""
    store = Store.parse(settings.training_store)
    name = attempt_name(ref, attempt)
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": ref.namespace,
            "labels": labels(ref, spec.base_model, attempt),
        },
        "data": {CONFIG_FILE: yaml.safe_dump(trainer_config(ref, spec, base, store), sort_keys=True)},
    }
    return [
        owned_by_job(ref, config),
        owned_by_job(ref, trainer_job(ref, spec, base, settings, attempt, node)),
    ]


def trainer_job(
    ref: TrainingJobRef,
    spec: TrainingJobSpec,
    base: BaseModelSpec,
    settings: OperatorSettings,
    attempt: int,
    node: str | None,
) -> Manifest:
    store = Store.parse(settings.training_store)
    name = attempt_name(ref, attempt)
    _, model_volumes, model_mounts = model_location(base)
    _, data_volumes, data_mounts = _dataset(spec.dataset.uri)
    volumes = [*model_volumes, *data_volumes, {"name": "config", "configMap": {"name": name}}]
    mounts = [*model_mounts, *data_mounts, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    if store.claim is not None:
        volumes.append({"name": "store", "persistentVolumeClaim": {"claimName": store.claim}})
        mounts.append({"name": "store", "mountPath": STORE_MOUNT})
    home_volume, home_mount, home_env = writable_home("trainer-home", TRAINER_HOME)
    volumes.append(home_volume)
    mounts.append(home_mount)
    env_from = store_credentials(base)
    resources = spec.resources
    container: Manifest = {
        "name": TRAINER_CONTAINER,
        "image": settings.trainer_image,
        "imagePullPolicy": PULL_POLICY,
        "args": ["trainer", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": [
            {"name": "LORAPLEX_TRAININGJOB", "value": ref.name},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            *home_env,
        ],
        **env_from,
        "resources": model_resources(
            base.resources.gpu_resource_name, resources.gpu, resources.cpu, resources.memory
        ),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    pod_labels = labels(ref, spec.base_model, attempt)
    node_selector = dict(base.node_selector)
    if node is not None:
        node_selector[HOSTNAME_LABEL] = node
    init_containers = fetch_model_containers(base, settings, model_mounts)
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account_name(spec.base_model),
        "automountServiceAccountToken": True,  # the trainer patches its TrainingJob's status
        "priorityClassName": settings.trainer_priority_class,
        "terminationGracePeriodSeconds": POD_GRACE_PERIOD_SECONDS,
        "nodeSelector": node_selector,
        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in base.tolerations],
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    restricted(merge_claim_volumes(pod_spec))
    job_labels = dict(pod_labels)
    if spec.queue_name and node is None:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ref.namespace, "labels": job_labels},
        "spec": {
            "backoffLimit": 0,
            "suspend": bool(spec.queue_name and node is None),
            # A preempted or evicted pod fails the Job at once, and says so in the Job's condition.
            "podFailurePolicy": {
                "rules": [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}]
            },
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def trainer_access(base_model: str, namespace: str, base_model_uid: str) -> list[Manifest]:
    """Trainer pods' ServiceAccount, bound to the chart's loraplex-trainer ClusterRole (BaseModel-owned)."""
    ref = BaseModelRef(base_model, namespace, base_model_uid)
    return [owned_by(ref, service_account(ref, TRAINER)), owned_by(ref, role_binding(ref, TRAINER))]


def owned_by_job(ref: TrainingJobRef, manifest: Manifest) -> Manifest:
    """Owner reference to the TrainingJob (deleting it deletes its attempts) and the content hash."""
    return owned(manifest, "TrainingJob", ref.name, ref.uid)


def output_adapter(namespace: str, spec: TrainingJobSpec, uri: str, sha256: str, job_name: str) -> Manifest:
    """The LoRAAdapter the job creates or updates: its new revision is the published adapter."""
    return {
        "apiVersion": API_VERSION,
        "kind": "LoRAAdapter",
        "metadata": {
            "name": spec.output.adapter_name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, TRAINING_JOB_LABEL: job_name},
        },
        "spec": {
            "baseModel": spec.base_model,
            "source": {"uri": uri, "sha256": sha256},
            "rank": spec.lora.rank,
            "replicas": spec.output.replicas,
        },
    }
