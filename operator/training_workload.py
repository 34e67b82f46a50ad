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
The pod passes the `restricted` Pod Security Standard (see pod_security) and
mounts no service-account token: the trainer reports progress on stdout, where
the operator reads it (training_logs), and its result in its termination message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
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
from loraplex.api.trainer import STORE_CREDENTIAL_KEYS, STORE_CREDENTIALS_ENV
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.fleet import (
    PULL_POLICY,
    Manifest,
    fetch_model_containers,
    model_location,
    model_resources,
    owned,
    pull_secrets,
    pvc_parts,
)
from loraplex.operator.pod_security import restricted, writable_home
from loraplex.operator.pod_volumes import merge_claim_volumes
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_roots import parse_roots, place_dataset

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
HOSTNAME_LABEL = "kubernetes.io/hostname"
TRAINER_CONTAINER = "trainer"
CONFIG_DIR = "/etc/loraplex"
CONFIG_FILE = "trainer.yaml"
STORE_MOUNT = "/store"
DATA_MOUNT = "/data"
TERMINATION_LOG = "/dev/termination-log"
STORE_CREDENTIALS_DIR = "/var/run/loraplex/store"  # the store Secret's S3 keys, one file each
TRAINER_HOME = "/home/trainer"  # HOME and caches (Hugging Face, Triton) of the trainer, as uid 65532
TRAINER_SCRATCH = f"{TRAINER_HOME}/scratch"  # s3:// stores' mirror and s3/https datasets' copies
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


def checkpoint_uri(ref: TrainingJobRef, store: Store, local: bool = True) -> str:
    """The folder the trainer checkpoints this spec's adapter under (its `<checkpointUri>/<name>/`).

    One per generation and scheduled run, so a rerun never resumes the finished run's checkpoint.
    """
    root = store.local_root if local else store.public_root
    run = f"-r{ref.run}" if ref.run else ""
    return f"{root}/checkpoints/{ref.namespace}/{ref.uid}/g{ref.generation}{run}"


def output_uri(ref: TrainingJobRef, spec: TrainingJobSpec, store: Store) -> str:
    return f"{store.local_root}/adapters/{ref.namespace}/{spec.output.adapter_name}"


@dataclass(frozen=True)
class DatasetMount:
    """The dataset as the trainer reads it: its URI, the root it must stay under, the volume behind it."""

    uri: str
    root: str | None  # local folder the trainer checks the dataset's real path against
    volumes: list[Manifest]
    mounts: list[Manifest]


def dataset_mount(uri: str, roots: Sequence[str]) -> DatasetMount:
    """The dataset `uri` under the admin's `roots`, normalized (see training_roots). A pvc:// root's
    folder alone is mounted (`subPath`), read-only, at /data: the pod sees nothing of the claim above
    it. Raises RootError when no root admits `uri` (the job was failed before any attempt)."""
    placement = place_dataset(uri, parse_roots(roots))
    root, relative = placement.root, "/".join(placement.relative)
    if root.scheme == "pvc":
        volume = {"name": "data", "persistentVolumeClaim": {"claimName": root.authority, "readOnly": True}}
        mount = {"name": "data", "mountPath": DATA_MOUNT, "readOnly": True}
        if root.segments:
            mount["subPath"] = root.path
        local = f"file://{DATA_MOUNT}" + (f"/{relative}" if relative else "")
        return DatasetMount(local, DATA_MOUNT, [volume], [mount])
    if root.scheme == "file":
        return DatasetMount(placement.dataset.uri(), "/" + root.path, [], [])
    return DatasetMount(placement.dataset.uri(), None, [], [])


def trainer_config(
    ref: TrainingJobRef,
    spec: TrainingJobSpec,
    base: BaseModelSpec,
    store: Store,
    dataset_roots: Sequence[str],
    init_revision: str | None = None,
) -> dict[str, Any]:
    """The trainer's config file (worker/trainer/config.py, camelCase) for this job; `init_revision`:
    a revision published into its output folder to start from (spec.initFrom: published)."""
    model_path, _, _ = model_location(base)
    data = dataset_mount(spec.dataset.uri, dataset_roots)
    dataset = spec.dataset.model_dump(by_alias=True, exclude_none=True) | {"uri": data.uri}
    return {
        "baseModel": model_path,
        "checkpointUri": checkpoint_uri(ref, store),
        "adapters": [
            {
                "name": ref.name,
                "dataset": dataset,
                **({"datasetRoot": data.root} if data.root else {}),
                "lora": spec.lora.model_dump(by_alias=True, exclude_none=True),
                "training": spec.training.model_dump(by_alias=True, exclude_none=True),
                "checkpoint": spec.checkpoint.model_dump(by_alias=True, exclude_none=True),
                "outputUri": output_uri(ref, spec, store),
                **({"initRevision": init_revision} if init_revision else {}),
            }
        ],
        "scratchDir": TRAINER_SCRATCH,
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
    init_revision: str | None = None,
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
        "data": {
            CONFIG_FILE: yaml.safe_dump(
                trainer_config(ref, spec, base, store, settings.training_dataset_roots, init_revision),
                sort_keys=True,
            )
        },
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
    resources = spec.resources
    return trainer_pod_job(
        TrainerPod(
            name=attempt_name(ref, attempt),
            namespace=ref.namespace,
            labels=labels(ref, spec.base_model, attempt),
            gpu=resources.gpu,
            cpu=resources.cpu,
            memory=resources.memory,
            dataset_uri=spec.dataset.uri,
        ),
        base,
        settings,
        node,
        spec.queue_name,
    )


@dataclass(frozen=True)
class TrainerPod:
    """What differs between trainer pods: a dedicated attempt's, or a warm trainer's."""

    name: str  # of the Job and of the ConfigMap holding its config
    namespace: str
    labels: dict[str, str]
    gpu: int
    cpu: str | None
    memory: str | None
    dataset_uri: str  # the pod mounts the dataset root this URI is under


def trainer_pod_job(
    pod: TrainerPod, base: BaseModelSpec, settings: OperatorSettings, node: str | None, queue: str | None
) -> Manifest:
    """The batch/v1 Job running `loraplex trainer` with the config in ConfigMap `pod.name`; `node`
    None with `queue`: created suspended in that Kueue LocalQueue."""
    store = Store.parse(settings.training_store)
    _, model_volumes, model_mounts = model_location(base)
    data = dataset_mount(pod.dataset_uri, settings.training_dataset_roots)
    volumes = [*model_volumes, *data.volumes, {"name": "config", "configMap": {"name": pod.name}}]
    mounts = [*model_mounts, *data.mounts, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    if store.claim is not None:
        volumes.append({"name": "store", "persistentVolumeClaim": {"claimName": store.claim}})
        mounts.append({"name": "store", "mountPath": STORE_MOUNT})
    home_volume, home_mount, home_env = writable_home("trainer-home", TRAINER_HOME)
    volumes.append(home_volume)
    mounts.append(home_mount)
    credentials = store_credential_files(base)
    volumes += credentials.volumes
    mounts += credentials.mounts
    container: Manifest = {
        "name": TRAINER_CONTAINER,
        "image": settings.trainer_image,
        "imagePullPolicy": PULL_POLICY,
        "args": ["trainer", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": [
            *home_env,
            *credentials.env,
        ],
        "resources": model_resources(base.resources.gpu_resource_name, pod.gpu, pod.cpu, pod.memory),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    node_selector = dict(base.node_selector)
    if node is not None:
        node_selector[HOSTNAME_LABEL] = node
    init_containers = fetch_model_containers(base, settings, model_mounts)
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        # No token: the trainer calls no Kubernetes API; the operator reads its progress from its log.
        "automountServiceAccountToken": False,
        "priorityClassName": settings.trainer_priority_class,
        "terminationGracePeriodSeconds": POD_GRACE_PERIOD_SECONDS,
        "nodeSelector": node_selector,
        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in base.tolerations],
        **pull_secrets(base),
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    restricted(merge_claim_volumes(pod_spec))
    job_labels = dict(pod.labels)
    suspended = bool(queue and node is None)
    if suspended:
        job_labels[KUEUE_QUEUE_LABEL] = str(queue)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": job_labels},
        "spec": {
            "backoffLimit": 0,
            "suspend": suspended,
            # A preempted or evicted pod fails the Job at once, and says so in the Job's condition.
            "podFailurePolicy": {
                "rules": [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}]
            },
            "template": {"metadata": {"labels": dict(pod.labels)}, "spec": pod_spec},
        },
    }


@dataclass(frozen=True)
class CredentialFiles:
    """The store keys the trainer needs, as files of a Secret volume, and the variable naming their folder."""

    volumes: list[Manifest]
    mounts: list[Manifest]
    env: list[Manifest]


def store_credential_files(base: BaseModelSpec) -> CredentialFiles:
    """The BaseModel's store Secret (`adapterStoreSecretRef`), if any, mounted read-only with only
    the S3 keys (`items`; a key the Secret lacks is skipped), never the whole Secret as environment."""
    ref = base.adapter_store_secret_ref
    if ref is None:
        return CredentialFiles([], [], [])
    items = [{"key": key, "path": key} for key in STORE_CREDENTIAL_KEYS]
    volume = {
        "name": "store-credentials",
        "secret": {"secretName": ref.name, "items": items, "optional": True, "defaultMode": 0o440},
    }
    mount = {"name": "store-credentials", "mountPath": STORE_CREDENTIALS_DIR, "readOnly": True}
    return CredentialFiles(
        [volume], [mount], [{"name": STORE_CREDENTIALS_ENV, "value": STORE_CREDENTIALS_DIR}]
    )


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
