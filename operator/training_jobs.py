"""TrainingJobs as the training pass reads them: parsed bodies, each job's step, and the queue.

A pass turns each indexed TrainingJob body into a `TrainingJobView` (its parsed
spec, its BaseModel, the status to plan from, its current attempt), asks
`training_status` for the job's step, and hands the jobs that wait for GPUs to
admission as a queue.

Pure: the caller passes the index entries, the store and `now`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.training_admission import QueuedJob
from loraplex.operator.training_roots import Location
from loraplex.operator.training_schedule import parse_time
from loraplex.operator.training_status import (
    TERMINAL,
    VALIDATION_REASONS,
    JobView,
    PodView,
    Step,
    as_status,
    plan_training,
)
from loraplex.operator.training_workload import Store, TrainingJobRef, attempt_name, checkpoint_uri

JobKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class TrainingJobView:
    """One TrainingJob as a pass sees it."""

    body: Mapping[str, Any]
    ref: TrainingJobRef
    spec: TrainingJobSpec
    base: BaseModelSpec | None
    base_uid: str | None
    status: dict[str, Any]
    view: JobView | None = None  # its current attempt's Job (or warm trainer's), with that Job's pods
    tenant: Mapping[str, Any] | None = None  # its state in its warm trainer's last `tenants` report

    @property
    def shared(self) -> bool:
        """Whether the job runs as a tenant of a warm trainer (a Kueue job never does)."""
        return self.spec.sharing == "shared" and not self.spec.queue_name

    @property
    def trainer(self) -> str | None:
        """The warm trainer its status places it in."""
        return (self.status.get("placement") or {}).get("trainer")

    @property
    def attempt(self) -> str:
        """The name of its current attempt's Job (and ConfigMap)."""
        return attempt_name(self.ref, int(self.status.get("attempts") or 0))


def unfinished(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether a job has something left to do: unfinished, fixable, or a success that runs again."""
    if status.get("phase") not in TERMINAL:
        return True
    if status.get("phase") == "Succeeded" and spec.get("schedule"):
        return True
    ready = [c for c in status.get("conditions", []) or [] if c.get("type") == "Ready"]
    return bool(ready) and ready[0].get("reason") in VALIDATION_REASONS


def parse_job(
    namespace: str,
    body: Mapping[str, Any],
    status: dict[str, Any],
    base_models: Mapping[tuple[str, str], Iterable[tuple[str, Mapping[str, Any]]]],
) -> TrainingJobView | None:
    """The job of an indexed TrainingJob `body`, planned from `status`; None when a pass leaves it alone
    (being deleted, or a spec admission would refuse now, on an old object).

    `base_models`: (namespace, name) -> (uid, spec) of each BaseModel; a missing or invalid one is None.
    """
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return None
    try:
        spec = TrainingJobSpec.model_validate(body["spec"])
    except ValidationError:
        return None
    base, base_uid = None, None
    for uid, base_spec in base_models.get((namespace, spec.base_model), []):
        try:
            base, base_uid = BaseModelSpec.model_validate(base_spec), uid
        except ValidationError:
            base = None
    generation = int(status.get("observedGeneration") or meta.get("generation", 0))
    run = int(status.get("run") or 0)
    ref = TrainingJobRef(meta["name"], namespace, meta["uid"], generation, run)
    return TrainingJobView(body, ref, spec, base, base_uid, status)


def attempt_view(jobs: Iterable[JobView], pods: Iterable[PodView]) -> JobView | None:
    """The attempt's Job as the index shows it (None: there is none), with its pods by name."""
    views = list(jobs)
    if not views:
        return None
    return replace(views[0], pods=tuple(sorted(pods, key=lambda p: p.name)))


def plan_job(
    job: TrainingJobView,
    node: str | None,
    now: datetime,
    max_attempts: int,
    store: Store,
    dataset_roots: Sequence[Location],
    trainer: str | None = None,
) -> Step:
    """The job's step (`node`: where admission just put it; `trainer`: the warm trainer it joins
    there), with the checkpoint folder of a started run shown as workers reach it; `dataset_roots`:
    where datasets may be read from."""
    meta = job.body["metadata"]
    step = plan_training(
        namespace=job.ref.namespace,
        name=job.ref.name,
        generation=int(meta.get("generation", 0)),
        spec=job.spec,
        base=job.base,
        status=job.status,
        job=job.view,
        admitted_node=node,
        max_attempts=max_attempts,
        now=now,
        dataset_roots=dataset_roots,
        admitted_trainer=trainer,
        tenant=job.tenant,
    )
    if step.status.get("phase") not in ("Running", "Preempted", "Succeeded"):
        return step
    generation = int(step.status.get("observedGeneration") or job.ref.generation)
    run = int(step.status.get("run") or 0)
    ref = TrainingJobRef(job.ref.name, job.ref.namespace, job.ref.uid, generation, run)
    uri = f"{checkpoint_uri(ref, store, local=False)}/{job.ref.name}"
    return as_status(replace(step, status={**step.status, "checkpointUri": uri}))


def admission_queue(jobs: Iterable[tuple[TrainingJobView, Step]]) -> list[QueuedJob]:
    """The jobs whose step is to wait for GPUs, as admission queues them."""
    return [
        QueuedJob(
            key=f"{job.ref.namespace}/{job.ref.name}",
            priority=job.spec.priority,
            created=created(job.body),
            resource=job.base.resources.gpu_resource_name,
            gpus=job.spec.resources.gpu,
            node_selector=dict(job.base.node_selector),
        )
        for job, step in jobs
        if job.base is not None and waiting_for_capacity(step)
    ]


def trainer_usage(jobs: Iterable[tuple[TrainingJobView, Step]]) -> dict[str, dict[str, int]]:
    """node -> GPUs (by resource) the jobs whose step is Running on it in a trainer of their own hold
    (warm trainers are counted once each, by the pass)."""
    used: dict[str, dict[str, int]] = {}
    for job, step in jobs:
        placement = step.status.get("placement") or {}
        node_name = placement.get("node")
        if placement.get("trainer"):
            continue
        if step.status.get("phase") == "Running" and node_name and job.base is not None:
            per_node = used.setdefault(node_name, {})
            resource = job.base.resources.gpu_resource_name
            per_node[resource] = per_node.get(resource, 0) + job.spec.resources.gpu
    return used


def waiting_for_capacity(step: Step) -> bool:
    ready = [c for c in step.status.get("conditions", []) if c.get("type") == "Ready"]
    return (
        step.status.get("phase") == "Queued"
        and step.create_attempt is None
        and bool(ready)
        and ready[0].get("reason") == "WaitingForCapacity"
    )


def created(body: Mapping[str, Any]) -> datetime:
    """A body's creationTimestamp (the earliest time when it has none)."""
    return parse_time(body["metadata"].get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC)
