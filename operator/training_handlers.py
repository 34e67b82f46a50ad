"""kopf glue for TrainingJob: one admission pass over every TrainingJob, and what it writes.

GPUs are shared by every namespace, so admission is one pass over all
TrainingJobs, run at most once per `LORAPLEX_TRAINING_INTERVAL` by whichever
TrainingJob's timer fires first (timers run only on jobs with something left
to do, including succeeded jobs with a `spec.schedule`, and pause with
peering). A pass reads only kopf's indexes (`indexes`: nodes, pods, trainer
Jobs, BaseModels, TrainingJobs, worker StatefulSets) plus the tail of each
running trainer's log (`training_logs`: its progress, at most every
`PROGRESS_INTERVAL_SECONDS` per pod; the operator is the one writer of
TrainingJob status, trainer pods hold no token), asks `training_jobs`
for each job and its step (`training_status` decides the step), asks
`training_admission` which queued jobs start on which node (over the GPU
picture `training_capacity` draws; shared jobs join warm trainers as
`training_tenancy` plans), then applies: the attempt's ConfigMap and Job (a
warm trainer's tenants file and Job: `training_warm_writes`), the output
LoRAAdapter on success (`training_publish`), the status (only when it
changed) and Events. The statuses it just wrote are kept for a few
seconds (`training_throttle`) so the next pass never admits a job twice while
the watch catches up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client

from loraplex.api import GROUP, TRAINING_JOBS, VERSION
from loraplex.operator import metrics
from loraplex.operator.apply import Applier
from loraplex.operator.fleet_scale import FleetTargets
from loraplex.operator.fleet_status import status_changed
from loraplex.operator.indexes import Indexes
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_admission import Cluster, Node, plan_admission
from loraplex.operator.training_capacity import cluster, serving_demands
from loraplex.operator.training_jobs import (
    JobKey,
    TrainingJobView,
    admission_queue,
    attempt_view,
    parse_job,
    plan_job,
    trainer_usage,
    unfinished,
)
from loraplex.operator.training_logs import ProgressReader, kubernetes_reader
from loraplex.operator.training_progress import with_progress
from loraplex.operator.training_publish import AdapterPublisher
from loraplex.operator.training_roots import parse_roots
from loraplex.operator.training_status import (
    JobView,
    Step,
    init_revision,
    output_conflict,
    output_refused,
)
from loraplex.operator.training_tenancy import (
    NewTrainer,
    TrainerGroup,
    plan_tenancy,
)
from loraplex.operator.training_throttle import PassThrottle, RecentStatuses
from loraplex.operator.training_warm import (
    WarmTrainerView,
    current_tenant_state,
    warm_gpus,
    warm_trainer_name,
)
from loraplex.operator.training_warm_writes import WarmTrainers, tenant_trainer
from loraplex.operator.training_workload import (
    Store,
    TrainingJobRef,
    attempt_name,
    output_uri,
    plan_attempt,
)

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 5.0  # the least time between two reads of one trainer pod's log
WARM_QUEUE_PREFIX = "warm-trainer:"  # admission keys of new warm trainers (job keys hold one "/")


def _split(key: str) -> JobKey:
    namespace, name = key.split("/", 1)
    return namespace, name


def register(
    registry: kopf.OperatorRegistry,
    settings: OperatorSettings,
    api: client.ApiClient,
    applier: Applier,
    targets: FleetTargets,
) -> None:
    """Attach the admission pass to `registry` (the indexes it reads are `indexes.register`'s).

    `targets` holds the worker counts the BaseModels' placement loops decided: admission keeps
    the GPUs those workers need free.
    """
    reader = ProgressReader(
        kubernetes_reader(client.CoreV1Api(api)),
        max(settings.training_interval_seconds, PROGRESS_INTERVAL_SECONDS),
    )
    loop = TrainingLoop(
        settings, client.CustomObjectsApi(api), applier, targets, reader, client.CoreV1Api(api)
    )

    def has_work(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
        return unfinished(spec, status)

    @kopf.timer(
        GROUP, VERSION, TRAINING_JOBS, id="training", interval=settings.training_interval_seconds,
        when=has_work, registry=registry,
    )  # fmt: skip
    def training(logger: kopf.Logger, **kwargs: Any) -> None:
        loop.run(Indexes.from_kwargs(kwargs), logger)

    @kopf.on.event(GROUP, VERSION, TRAINING_JOBS, id="training-created", registry=registry)
    def training_created(type: str | None, logger: kopf.Logger, **kwargs: Any) -> None:
        """A new job is judged (and maybe admitted) at once rather than at its timer's first tick.

        An event handler (not on.create): kopf then writes no bookkeeping annotations on the job.
        """
        if type == "ADDED":
            loop.run(Indexes.from_kwargs(kwargs), logger, force=True)


class TrainingLoop:
    """The admission pass and what it remembers between passes (statuses it just wrote)."""

    def __init__(
        self,
        settings: OperatorSettings,
        custom: client.CustomObjectsApi,
        applier: Applier,
        targets: FleetTargets,
        progress: ProgressReader | None = None,  # None: progress only from the trainers' summaries
        core: client.CoreV1Api | None = None,  # None: warm trainers' pods are not nudged (tests)
    ) -> None:
        self.settings = settings
        self.core = core
        self.progress = progress
        self.targets = targets
        self.custom = custom
        self.applier = applier
        self.store = Store.parse(settings.training_store)
        self.dataset_roots = parse_roots(settings.training_dataset_roots)
        self.publisher = AdapterPublisher(custom, self.store)
        self.lock = threading.Lock()
        self.throttle = PassThrottle(settings.training_interval_seconds)
        self.recent = RecentStatuses()
        self.warm = WarmTrainers(settings, applier, self.store, core)

    def run(self, indexes: Indexes, logger: kopf.Logger, force: bool = False) -> None:
        with self.lock:
            started = time.monotonic()
            if not self.throttle.due(started, force):
                return
            with metrics.reconciling("TrainingJob"):  # one pass reconciles every TrainingJob at once
                self._pass(indexes, logger)
            metrics.TRAINING_PASS_SECONDS.observe(time.monotonic() - started)

    def _pass(self, indexes: Indexes, logger: kopf.Logger) -> None:
        now, clock = datetime.now(UTC), time.monotonic()
        self.recent.expire(clock)
        jobs = list(self._jobs(indexes, clock))
        by_key = dict(jobs)
        steps = {key: self._plan(job, None, now) for key, job in jobs}
        warm = self.warm.views(indexes, jobs, steps)
        queue = admission_queue((job, steps[key]) for key, job in jobs if not job.shared)
        tenancy = plan_tenancy(
            self.warm.running(warm, jobs, steps, clock),
            [waiting for key, job in jobs if (waiting := self.warm.waiting(job, steps[key])) is not None],
            self.warm.capacity,
        )
        for job_key, trainer in tenancy.joins.items():
            key = _split(job_key)
            steps[key] = self._plan(by_key[key], warm[(key[0], trainer)].node, now, trainer)
        new = {f"{WARM_QUEUE_PREFIX}{i}": trainer for i, trainer in enumerate(tenancy.new)}
        queue += [q for key, trainer in new.items() if (q := self.warm.request(key, trainer, indexes))]
        plan = plan_admission(self._cluster(indexes, jobs, steps, warm), queue)
        for queued_key, node in plan.admitted.items():
            if queued_key in new:
                self._start_trainer(new[queued_key], node, by_key, steps, warm, now)
                continue
            key = _split(queued_key)
            steps[key] = self._plan(by_key[key], node, now)
        phases: dict[str, int] = {p: 0 for p in ("Queued", "Running", "Preempted", "Succeeded", "Failed")}
        running: list[tuple[str, str]] = []
        for key, job in jobs:
            steps[key] = self._apply(job, self._with_progress(job, steps[key], running), logger)
            phase = steps[key].status.get("phase")
            if phase in phases:
                phases[phase] += 1
        self.warm.write(indexes, warm, [(job, steps[key]) for key, job in jobs], clock, logger)
        if self.progress is not None:
            self.progress.forget_all_but(running)
        for phase, count in phases.items():
            metrics.TRAINING_JOBS.labels(phase).set(count)

    def _jobs(self, indexes: Indexes, clock: float) -> Iterable[tuple[JobKey, TrainingJobView]]:
        for key in indexes.training_job_keys():
            for body in indexes.training_job_bodies(key):
                status = self.recent.status(body["metadata"]["uid"], body.get("status") or {})
                job = parse_job(key[0], body, status, indexes.base_models)
                if job is None:
                    continue
                name = job.trainer or job.attempt  # a warm trainer's tenant follows that trainer's Job
                view = attempt_view(indexes.trainer_job(key[0], name), indexes.attempt_pods(key[0], name))
                yield key, replace(job, view=view, tenant=self._tenant(job, view, clock))

    def _tenant(self, job: TrainingJobView, view: JobView | None, clock: float) -> dict[str, Any] | None:
        """The job's state in its warm trainer's last report (None: a dedicated job, or none yet)."""
        if self.progress is None or job.trainer is None or view is None or not view.pods:
            return None
        pod = view.pods[-1]
        if pod.phase not in ("Running", "Succeeded", "Failed"):
            return None
        state = self.progress.tenant(job.ref.namespace, pod.name, job.ref.name, clock)
        generation = int(job.status.get("observedGeneration") or job.ref.generation)
        ref = replace(job.ref, generation=generation, run=int(job.status.get("run") or 0))
        return current_tenant_state(state, ref, self.store)

    def _start_trainer(
        self,
        trainer: NewTrainer,
        node: str,
        by_key: dict[JobKey, TrainingJobView],
        steps: dict[JobKey, Step],
        warm: dict[tuple[str, str], WarmTrainerView],
        now: datetime,
    ) -> None:
        """Place a new trainer's tenants in it; `WarmTrainers.write` makes its Job."""
        first = by_key[_split(trainer.tenants[0])]
        attempts = int(first.status.get("attempts") or 0)
        name = warm_trainer_name(trainer.group.base_model, first.ref.uid, attempts)
        salt = 0
        while (trainer.group.namespace, name) in warm:  # a finished trainer of the same first tenant
            salt += 1
            name = warm_trainer_name(trainer.group.base_model, first.ref.uid, attempts, salt)
        warm[(trainer.group.namespace, name)] = WarmTrainerView(
            trainer.group.namespace, name, trainer.group, node
        )
        for tenant in trainer.tenants:
            key = _split(tenant)
            steps[key] = self._plan(by_key[key], node, now, name)

    def _with_progress(self, job: TrainingJobView, step: Step, running: list[tuple[str, str]]) -> Step:
        """`step` with the progress its running trainer pod's log shows (added to `running`)."""
        pod = (step.status.get("placement") or {}).get("pod")
        if self.progress is None or step.status.get("phase") != "Running" or not pod or job.view is None:
            return step
        if not any(p.name == pod and p.phase == "Running" and not p.deleting for p in job.view.pods):
            return step
        running.append((job.ref.namespace, pod))
        progress = self.progress.progress(job.ref.namespace, pod, job.ref.name, time.monotonic())
        return replace(step, status=with_progress(step.status, progress))

    def _plan(
        self, job: TrainingJobView, node: str | None, now: datetime, trainer: str | None = None
    ) -> Step:
        return plan_job(
            job, node, now, self.settings.training_max_attempts, self.store, self.dataset_roots, trainer
        )

    def _cluster(
        self,
        indexes: Indexes,
        jobs: list[tuple[JobKey, TrainingJobView]],
        steps: dict[JobKey, Step],
        warm: dict[tuple[str, str], WarmTrainerView],
    ) -> Cluster:
        nodes = [
            Node(name, view.allocatable, view.labels) for name, view in indexes.all_nodes() if view.usable
        ]
        held = {node.name: indexes.gpus_held_on(node.name) for node in nodes}
        trainers = trainer_usage((job, steps[key]) for key, job in jobs)

        def resource(group: TrainerGroup) -> str | None:
            base = self.warm.base(indexes, group)
            return base[1].resources.gpu_resource_name if base else None

        for node_name, gpus in warm_gpus(warm.values(), resource).items():
            per_node = trainers.setdefault(node_name, {})
            for name, count in gpus.items():
                per_node[name] = per_node.get(name, 0) + count
        serving = serving_demands(indexes.base_models, indexes.pods, indexes.worker_sets, self.targets)
        return cluster(nodes, held, trainers, serving)

    def _apply(self, job: TrainingJobView, step: Step, logger: kopf.Logger) -> Step:
        """Carry the step out; the step carried out (an output adapter that cannot take the job's
        revision fails the job, before an attempt starts or when it would publish)."""
        ref, namespace, name = job.ref, job.ref.namespace, job.ref.name
        init: str | None = None
        joined = tenant_trainer(step) is not None and tenant_trainer(step) != job.trainer
        if step.create_attempt is not None or joined:
            live = self.publisher.output_adapter(namespace, job.spec)
            root = self.store.public(output_uri(ref, job.spec, self.store))
            init, unavailable = init_revision(job.spec, step.status, live, root)
            conflict = output_conflict(job.spec, live, None) or unavailable
            if conflict is not None:
                step = output_refused(
                    step.status, job.status.get("adapterRevision"), datetime.now(UTC), *conflict
                )
            elif step.status.get("initRevision") != init:
                step = replace(step, status={**step.status, "initRevision": init})
        if step.create_attempt is not None and job.base is not None and job.base_uid is not None:
            generation = int(step.status.get("observedGeneration") or ref.generation)
            run = int(step.status.get("run") or 0)
            attempt_ref = TrainingJobRef(name, namespace, ref.uid, generation, run)
            written = self.applier.apply_all(
                plan_attempt(
                    attempt_ref, job.spec, job.base, self.settings, step.create_attempt, step.node, init
                )
            )
            if written:
                if step.node is not None:
                    metrics.TRAINING_ADMISSIONS.inc()
                logger.info(
                    f"Created attempt {step.create_attempt} of training job {namespace}/{name} "
                    f"node={step.node or '-'} job={attempt_name(attempt_ref, step.create_attempt)}"
                )
        if step.publish is not None:
            refused = self.publisher.publish(
                namespace, name, job.spec, step.publish.uri, step.publish.sha256, logger
            )
            if refused is not None:
                step = output_refused(
                    step.status, job.status.get("adapterRevision"), datetime.now(UTC), *refused
                )
        if status_changed(job.status, step.status):
            patch = {k: v for k, v in step.status.items() if job.status.get(k) != v}
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, TRAINING_JOBS, name, {"status": patch}
            )
            metrics.API_WRITES.labels("TrainingJob", "patch-status").inc()
            self.recent.remember(ref.uid, {**job.status, **step.status}, time.monotonic())
            if step.status.get("phase") != job.status.get("phase"):
                logger.info(
                    f"Moved training job {namespace}/{name} to {step.status.get('phase')} "
                    f"attempts={step.status.get('attempts')}"
                )
        for event in step.events:
            if event.reason == "Preempted":
                metrics.TRAINING_PREEMPTIONS.inc()
            kopf.event(
                kopf.Body(cast(kopf.RawBody, dict(job.body))),
                type=event.type,
                reason=event.reason,
                message=event.message,
            )
        return step
