"""The warm trainers' part of the training pass: which trainers there are, which may take tenants,
and each one's tenants file and Job, written from its tenants' statuses.

The decisions are pure and live elsewhere (`training_tenancy` places tenants, `training_warm`
builds the manifests and reads trainers from the index); this class keeps what a pass must remember
between passes (how long each trainer has been empty, the Jobs just created) and does the writes:
ConfigMaps and Jobs through the applier, and the pod annotation that makes the kubelet update a
running trainer's mounted tenants file at once (`_nudge`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.labels import HASH_ANNOTATION, TENANTS_ANNOTATION
from loraplex.operator import metrics
from loraplex.operator.apply import Applier
from loraplex.operator.indexes import Indexes
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_admission import QueuedJob
from loraplex.operator.training_jobs import JobKey, TrainingJobView, created, waiting_for_capacity
from loraplex.operator.training_status import JobView, Step, placed_trainer
from loraplex.operator.training_tenancy import (
    Capacity,
    NewTrainer,
    RunningTrainer,
    TrainerGroup,
    WaitingTenant,
)
from loraplex.operator.training_warm import (
    WarmTrainerView,
    running_trainers,
    tenant_entry,
    trainer_group,
    warm_config_map,
    warm_trainer_job,
    warm_trainer_views,
)
from loraplex.operator.training_workload import Store, TrainingJobRef

log = logging.getLogger(__name__)

RECENT_TRAINER_SECONDS = 30.0  # a Job just created may be missing from the index this long

TrainerKey = tuple[str, str]  # (namespace, warm trainer name)


def tenant_trainer(step: Step) -> str | None:
    """The warm trainer a step places its job in, as a tenant in flight (Running)."""
    return placed_trainer(step.status) if step.status.get("phase") == "Running" else None


class WarmTrainers:
    """What the training pass does for warm trainers, and what it remembers about them between passes."""

    def __init__(
        self,
        settings: OperatorSettings,
        applier: Applier,
        store: Store,
        core: client.CoreV1Api | None = None,  # None: trainers' pods are not nudged (tests)
    ) -> None:
        self.settings = settings
        self.applier = applier
        self.store = store
        self.core = core
        self.capacity = Capacity(settings.training_max_tenants, settings.training_max_rank_sum)
        self.empty_since: dict[TrainerKey, float] = {}  # warm trainer -> since when it has no tenant
        self.recent_trainers: dict[TrainerKey, float] = {}  # warm trainer -> until when its new Job
        # may still be missing from the index (so it is not created again meanwhile)

    def views(
        self, indexes: Indexes, jobs: list[tuple[JobKey, TrainingJobView]], steps: dict[JobKey, Step]
    ) -> dict[tuple[str, str], WarmTrainerView]:
        """Every warm trainer: those the index shows, with their pods, and those only their tenants'
        statuses name (just created, so not indexed yet, or gone while their tenants were away:
        `write` makes their Job)."""
        warm = warm_trainer_views(
            (namespace, replace(job, pods=tuple(indexes.attempt_pods(namespace, job.name))))
            for namespace, job in indexes.warm_trainers()
        )
        for key, job in jobs:
            trainer = tenant_trainer(steps[key])
            if trainer is None or (key[0], trainer) in warm:
                continue
            group = trainer_group(key[0], job.spec, self.settings.training_dataset_roots)
            node = (steps[key].status.get("placement") or {}).get("node")
            warm[(key[0], trainer)] = WarmTrainerView(key[0], trainer, group, node)
        return warm

    def running(
        self,
        warm: dict[tuple[str, str], WarmTrainerView],
        jobs: list[tuple[JobKey, TrainingJobView]],
        steps: dict[JobKey, Step],
        clock: float,
    ) -> list[RunningTrainer]:
        """The warm trainers jobs may join, with the ranks of the tenants each holds now."""
        tenants: dict[tuple[str, str], list[int]] = {key: [] for key in warm}
        for key, job in jobs:
            trainer = tenant_trainer(steps[key])
            if trainer is not None and (key[0], trainer) in tenants:
                tenants[(key[0], trainer)].append(job.spec.lora.rank)
        for held, ranks in tenants.items():
            if ranks:
                self.empty_since.pop(held, None)
            else:
                self.empty_since.setdefault(held, clock)
        for gone in set(self.empty_since) - set(warm):
            del self.empty_since[gone]
        empty_for = {key: clock - since for key, since in self.empty_since.items()}
        return running_trainers(warm, tenants, empty_for, self.settings.training_idle_seconds)

    def waiting(self, job: TrainingJobView, step: Step) -> WaitingTenant | None:
        if not job.shared or job.base is None or not waiting_for_capacity(step):
            return None
        return WaitingTenant(
            f"{job.ref.namespace}/{job.ref.name}",
            trainer_group(job.ref.namespace, job.spec, self.settings.training_dataset_roots),
            job.spec.lora.rank,
            job.spec.priority,
            created(job.body),
        )

    def request(self, key: str, trainer: NewTrainer, indexes: Indexes) -> QueuedJob | None:
        """A new warm trainer as admission queues it: its GPUs, at its first tenant's rank."""
        base = self.base(indexes, trainer.group)
        if base is None:
            return None
        return QueuedJob(
            key=key,
            priority=trainer.priority,
            created=trainer.created,
            resource=base[1].resources.gpu_resource_name,
            gpus=trainer.group.gpus,
            node_selector=dict(base[1].node_selector),
        )

    def base(self, indexes: Indexes, group: TrainerGroup) -> tuple[str, BaseModelSpec] | None:
        """(uid, spec) of a trainer group's BaseModel; None when it is gone or invalid."""
        for uid, spec in indexes.base_model_entries((group.namespace, group.base_model)):
            try:
                return uid, BaseModelSpec.model_validate(spec)
            except ValidationError:
                return None
        return None

    def write(
        self,
        indexes: Indexes,
        warm: dict[tuple[str, str], WarmTrainerView],
        jobs: list[tuple[TrainingJobView, Step]],
        clock: float,
        logger: kopf.Logger,
    ) -> None:
        """Every warm trainer's tenants file from its tenants' statuses, and the Job of each trainer
        a tenant is placed in that has none (just admitted, or gone while its tenants were away)."""
        tenants: dict[tuple[str, str], list[tuple[TrainingJobView, Step]]] = {}
        for job, step in jobs:
            trainer = tenant_trainer(step)
            if trainer is not None:
                tenants.setdefault((job.ref.namespace, trainer), []).append((job, step))
        metrics.WARM_TRAINERS.set(sum(1 for view in warm.values() if not view.finished))
        metrics.WARM_TENANTS.set(sum(len(members) for members in tenants.values()))
        for key, view in sorted(warm.items()):
            members = tenants.get(key, [])
            if view.finished or (view.job is None and not members):
                continue
            base = self.base(indexes, view.group)
            if base is None:
                continue
            entries = [self._tenant_entry(job, step, base[1]) for job, step in members]
            config = warm_config_map(key[1], view.group, base[0], base[1], self.settings, entries)
            if self.applier.apply(config) and view.job is not None:
                self._nudge(key[0], view.job, config["metadata"]["annotations"][HASH_ANNOTATION])
            if view.job is None and view.node is not None and self.recent_trainers.get(key, 0.0) < clock:
                job_manifest = warm_trainer_job(
                    key[1], view.group, base[0], base[1], self.settings, view.node
                )
                if self.applier.create_if_missing(job_manifest):
                    metrics.TRAINING_ADMISSIONS.inc()
                    logger.info(
                        f"Started warm trainer {key[0]}/{key[1]} on node {view.node} "
                        f"tenants={','.join(sorted(job.ref.name for job, _ in members))}"
                    )
                self.recent_trainers[key] = clock + RECENT_TRAINER_SECONDS
        for key in [k for k, until in self.recent_trainers.items() if until < clock]:
            del self.recent_trainers[key]

    def _nudge(self, namespace: str, trainer: JobView, tenants_hash: str) -> None:
        """Annotate the warm trainer's running pod with its new tenants file's hash: the pod update
        makes the kubelet sync the pod at once, and with it the mounted ConfigMap, rather than on its
        next periodic sync (a minute by default). Best effort: that periodic sync comes anyway."""
        if self.core is None:
            return
        for pod in trainer.pods:
            if pod.phase not in ("Pending", "Running") or pod.deleting:
                continue
            patch = {"metadata": {"annotations": {TENANTS_ANNOTATION: tenants_hash}}}
            try:
                self.core.patch_namespaced_pod(pod.name, namespace, patch)
                metrics.API_WRITES.labels("Pod", "patch").inc()
            except ApiException as error:
                log.warning("Could not annotate warm trainer pod %s: %s", pod.name, error.reason)

    def _tenant_entry(self, job: TrainingJobView, step: Step, base: BaseModelSpec) -> dict[str, Any]:
        generation = int(step.status.get("observedGeneration") or job.ref.generation)
        run = int(step.status.get("run") or 0)
        ref = TrainingJobRef(job.ref.name, job.ref.namespace, job.ref.uid, generation, run)
        return tenant_entry(
            ref,
            job.spec,
            base,
            self.store,
            self.settings.training_dataset_roots,
            step.status.get("initRevision"),
        )
