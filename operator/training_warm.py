"""What a warm trainer runs: its Job and the ConfigMap holding its config and its tenants. Pure.

A warm trainer is a batch/v1 Job (one pod, the trainer PriorityClass, pinned
to the node admission gave it, owned by the BaseModel) running `loraplex
trainer` with a config that names a tenants file (worker/trainer/warm.py).
Both files are keys of one ConfigMap, which the pod mounts as a folder (not
`subPath`), so the kubelet swaps in each new version: `trainer.yaml` (the base
model, the idle time) is fixed at creation; `tenants.yaml` lists the trainer's
tenants, each exactly as a dedicated attempt's config lists its adapter plus
the job's own checkpoint folder, so a tenant resumes the same checkpoints in
any trainer, warm or dedicated. The operator rewrites `tenants.yaml` from the
TrainingJobs' statuses on every pass (only when it changed); the trainer reads
it between steps. That is the whole protocol: level-based, no API access in
the pod, nothing lost if either side restarts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.labels import (
    BASE_MODEL_LABEL,
    COMPONENT_LABEL,
    MANAGED_BY,
    TRAINER,
    TRAINER_GROUP_ANNOTATION,
    WARM_TRAINER_LABEL,
)
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.fleet import Manifest, model_location, owned
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_roots import parse_roots, place_dataset
from loraplex.operator.training_status import JobView
from loraplex.operator.training_tenancy import RunningTrainer, TrainerGroup, rank_class
from loraplex.operator.training_workload import (
    CONFIG_DIR,
    CONFIG_FILE,
    GRACE_PERIOD_SECONDS,
    TRAINER_SCRATCH,
    Store,
    TrainerPod,
    TrainingJobRef,
    checkpoint_uri,
    trainer_config,
    trainer_pod_job,
)

TENANTS_FILE = "tenants.yaml"
IDLE_MARGIN_SECONDS = 120.0  # a trainer empty for longer than its idle time less this takes no tenant


def trainer_group(namespace: str, spec: TrainingJobSpec, dataset_roots: Sequence[str]) -> TrainerGroup:
    """The group of warm trainers a shared job may join (training_tenancy). The dataset root its
    dataset is under is part of it: a trainer pod mounts one root, as a dedicated one does."""
    try:
        root = place_dataset(spec.dataset.uri, parse_roots(dataset_roots)).root.uri()
    except ValueError:
        root = ""
    resources = spec.resources
    return TrainerGroup(
        namespace,
        spec.base_model,
        resources.gpu,
        resources.cpu,
        resources.memory,
        rank_class(spec.lora.rank),
        root,
    )


def group_annotation(group: TrainerGroup) -> str:
    return json.dumps(asdict(group), sort_keys=True)


def parse_group(text: str | None) -> TrainerGroup | None:
    """The group a warm trainer's Job annotation names; None when it names none."""
    if not text:
        return None
    try:
        return TrainerGroup(**json.loads(text))
    except (ValueError, TypeError):
        return None


def warm_trainer_name(base_model: str, first_uid: str, attempts: int, salt: int = 0) -> str:
    """A new warm trainer's name, from its first tenant (uid and attempt): a pass that dies after
    creating it and runs again names the same trainer, so at most one is created. `salt`: the
    next name, where a finished trainer still holds this one."""
    digest = hashlib.sha256(f"{first_uid}/{attempts}/{salt}".encode()).hexdigest()[:8]
    return f"{base_model[:44]}-warm-{digest}"


def tenant_entry(
    ref: TrainingJobRef,
    spec: TrainingJobSpec,
    base: BaseModelSpec,
    store: Store,
    dataset_roots: Sequence[str],
    init_revision: str | None,
) -> dict[str, Any]:
    """The job as one tenant of a warm trainer: a dedicated attempt's adapter, with its own checkpoints."""
    (adapter,) = trainer_config(ref, spec, base, store, dataset_roots, init_revision)["adapters"]
    return {**adapter, "checkpointUri": checkpoint_uri(ref, store)}


def warm_labels(name: str, base_model: str) -> dict[str, str]:
    return {**MANAGED_BY, BASE_MODEL_LABEL: base_model, COMPONENT_LABEL: TRAINER, WARM_TRAINER_LABEL: name}


def warm_config_map(
    name: str,
    group: TrainerGroup,
    base_uid: str,
    base: BaseModelSpec,
    settings: OperatorSettings,
    tenants: Sequence[dict[str, Any]],
) -> Manifest:
    """The ConfigMap of warm trainer `name`: its fixed config and its current tenants."""
    store = Store.parse(settings.training_store)
    model_path, _, _ = model_location(base)
    config = {
        "baseModel": model_path,
        "checkpointUri": f"{store.local_root}/checkpoints/{group.namespace}/warm/{name}",
        "tenantsFile": f"{CONFIG_DIR}/{TENANTS_FILE}",
        "scratchDir": TRAINER_SCRATCH,
        "idleSeconds": settings.training_idle_seconds,
        "gracePeriodSeconds": GRACE_PERIOD_SECONDS,
    }
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": group.namespace,
            "labels": warm_labels(name, group.base_model),
        },
        "data": {
            CONFIG_FILE: yaml.safe_dump(config, sort_keys=True),
            TENANTS_FILE: yaml.safe_dump(
                {"tenants": sorted(tenants, key=lambda t: t["name"])}, sort_keys=True
            ),
        },
    }
    return owned(manifest, "BaseModel", group.base_model, base_uid)


def warm_trainer_job(
    name: str, group: TrainerGroup, base_uid: str, base: BaseModelSpec, settings: OperatorSettings, node: str
) -> Manifest:
    """The Job of warm trainer `name`, on `node`; it keeps the group in an annotation for later passes."""
    pod = TrainerPod(
        name=name,
        namespace=group.namespace,
        labels=warm_labels(name, group.base_model),
        gpu=group.gpus,
        cpu=group.cpu,
        memory=group.memory,
        dataset_uri=group.dataset_root or "file:///",
    )
    job = trainer_pod_job(pod, base, settings, node, None)
    job["metadata"]["annotations"] = {TRAINER_GROUP_ANNOTATION: group_annotation(group)}
    job["spec"]["ttlSecondsAfterFinished"] = 600  # finished warm trainers go; their tenants moved on
    return owned(job, "BaseModel", group.base_model, base_uid)


@dataclass(frozen=True)
class WarmTrainerView:
    """A warm trainer as one pass sees it: from its Job (the index), or only from its tenants'
    statuses (a trainer just admitted, or one whose Job is gone and is made again)."""

    namespace: str
    name: str
    group: TrainerGroup
    node: str | None
    job: JobView | None = None

    @property
    def finished(self) -> bool:
        """Its Job or pod ended, or is going: it takes no tenant any more."""
        job = self.job
        if job is None:
            return False
        pods_ended = any(p.phase in ("Succeeded", "Failed") or p.deleting or p.disrupted for p in job.pods)
        return job.complete or job.failed or job.deleting or pods_ended


def warm_trainer_views(jobs: Iterable[tuple[str, JobView]]) -> dict[tuple[str, str], WarmTrainerView]:
    """(namespace, name) -> each warm trainer the index shows."""
    views: dict[tuple[str, str], WarmTrainerView] = {}
    for namespace, job in jobs:
        group = parse_group(job.group)
        if group is not None:
            views[(namespace, job.name)] = WarmTrainerView(namespace, job.name, group, job.node, job)
    return views


def running_trainers(
    views: Mapping[tuple[str, str], WarmTrainerView],
    tenants: Mapping[tuple[str, str], Sequence[int]],
    empty_for: Mapping[tuple[str, str], float],
    idle_seconds: float,
) -> list[RunningTrainer]:
    """The warm trainers jobs may join: `tenants` (namespace, trainer) -> its tenants' ranks;
    `empty_for`: how long each has had no tenant. One empty for most of `idle_seconds` is about to
    exit (it learns of a new tenant only when the kubelet updates its ConfigMap, up to a minute or
    more later), so it takes none."""
    margin = min(IDLE_MARGIN_SECONDS, idle_seconds / 2)
    return [
        RunningTrainer(
            view.name,
            view.group,
            len(tenants.get(key, ())),
            sum(tenants.get(key, ())),
            accepting=view.node is not None
            and not view.finished
            and (bool(tenants.get(key)) or empty_for.get(key, 0.0) < idle_seconds - margin),
        )
        for key, view in sorted(views.items())
    ]


def warm_gpus(
    views: Iterable[WarmTrainerView], resource: Callable[[TrainerGroup], str | None]
) -> dict[str, dict[str, int]]:
    """node -> GPUs (by resource) the warm trainers that have not finished hold there; `resource`:
    a group's GPU resource name (its BaseModel's; None when the BaseModel is gone)."""
    used: dict[str, dict[str, int]] = {}
    for view in views:
        name = resource(view.group)
        if view.node is None or view.finished or name is None:
            continue
        per_node = used.setdefault(view.node, {})
        per_node[name] = per_node.get(name, 0) + view.group.gpus
    return used


def current_tenant_state(
    state: Mapping[str, Any] | None, ref: TrainingJobRef, store: Store
) -> dict[str, Any] | None:
    """A tenant's state in its trainer's report, if it is of the job's current run and generation
    (`ref`): a trainer that trained an earlier one (a scheduled rerun, a changed spec) still lists
    that one's result under the same name until it reads its new tenants file."""
    if state is None or state.get("checkpointUri") != checkpoint_uri(ref, store):
        return None
    return dict(state)
