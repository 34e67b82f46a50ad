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
picture `training_capacity` draws), then applies: the attempt's ConfigMap and
Job, the output LoRAAdapter on success (`training_publish`), the status (only
when it changed) and Events. The statuses it just wrote are kept for a few
seconds (`training_throttle`) so the next pass never admits a job twice while
the watch catches up.
"""

from __future__ import annotations

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
from loraplex.operator.training_status import Step, output_conflict, output_refused
from loraplex.operator.training_throttle import PassThrottle, RecentStatuses
from loraplex.operator.training_workload import (
    Store,
    TrainingJobRef,
    attempt_name,
    plan_attempt,
)

PROGRESS_INTERVAL_SECONDS = 5.0  # the least time between two reads of one trainer pod's log


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
    loop = TrainingLoop(settings, client.CustomObjectsApi(api), applier, targets, reader)

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
    ) -> None:
        self.settings = settings
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

    def run(self, indexes: Indexes, logger: kopf.Logger, force: bool = False) -> None:
        with self.lock:
            started = time.monotonic()
            if not self.throttle.due(started, force):
                return
            with metrics.reconciling("TrainingJob"):  # one pass reconciles every TrainingJob at once
                self._pass(indexes, logger)
            metrics.TRAINING_PASS_SECONDS.observe(time.monotonic() - started)

    def _pass(self, indexes: Indexes, logger: kopf.Logger) -> None:
        now = datetime.now(UTC)
        self.recent.expire(time.monotonic())
        jobs = list(self._jobs(indexes))
        steps = {key: self._plan(job, None, now) for key, job in jobs}
        queue = admission_queue((job, steps[key]) for key, job in jobs)
        plan = plan_admission(self._cluster(indexes, jobs, steps), queue)
        by_key = dict(jobs)
        for queued_key, node in plan.admitted.items():
            namespace, name = queued_key.split("/", 1)
            steps[(namespace, name)] = self._plan(by_key[(namespace, name)], node, now)
        phases: dict[str, int] = {p: 0 for p in ("Queued", "Running", "Preempted", "Succeeded", "Failed")}
        running: list[tuple[str, str]] = []
        for key, job in jobs:
            step = self._apply(job, self._with_progress(job, steps[key], running), logger)
            phase = step.status.get("phase")
            if phase in phases:
                phases[phase] += 1
        if self.progress is not None:
            self.progress.forget_all_but(running)
        for phase, count in phases.items():
            metrics.TRAINING_JOBS.labels(phase).set(count)

    def _jobs(self, indexes: Indexes) -> Iterable[tuple[JobKey, TrainingJobView]]:
        for key in indexes.training_job_keys():
            for body in indexes.training_job_bodies(key):
                status = self.recent.status(body["metadata"]["uid"], body.get("status") or {})
                job = parse_job(key[0], body, status, indexes.base_models)
                if job is None:
                    continue
                views = indexes.trainer_job(key[0], job.attempt)
                view = attempt_view(views, indexes.attempt_pods(key[0], job.attempt))
                yield key, replace(job, view=view)

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

    def _plan(self, job: TrainingJobView, node: str | None, now: datetime) -> Step:
        return plan_job(job, node, now, self.settings.training_max_attempts, self.store, self.dataset_roots)

    def _cluster(
        self, indexes: Indexes, jobs: list[tuple[JobKey, TrainingJobView]], steps: dict[JobKey, Step]
    ) -> Cluster:
        nodes = [
            Node(name, view.allocatable, view.labels) for name, view in indexes.all_nodes() if view.usable
        ]
        held = {node.name: indexes.gpus_held_on(node.name) for node in nodes}
        trainers = trainer_usage((job, steps[key]) for key, job in jobs)
        serving = serving_demands(indexes.base_models, indexes.pods, indexes.worker_sets, self.targets)
        return cluster(nodes, held, trainers, serving)

    def _apply(self, job: TrainingJobView, step: Step, logger: kopf.Logger) -> Step:
        """Carry the step out; the step carried out (an output adapter that cannot take the job's
        revision fails the job, before an attempt starts or when it would publish)."""
        ref, namespace, name = job.ref, job.ref.namespace, job.ref.name
        if step.create_attempt is not None:
            conflict = output_conflict(job.spec, self.publisher.output_adapter(namespace, job.spec), None)
            if conflict is not None:
                step = output_refused(
                    step.status, job.status.get("adapterRevision"), datetime.now(UTC), *conflict
                )
        if step.create_attempt is not None and job.base is not None and job.base_uid is not None:
            generation = int(step.status.get("observedGeneration") or ref.generation)
            run = int(step.status.get("run") or 0)
            attempt_ref = TrainingJobRef(name, namespace, ref.uid, generation, run)
            written = self.applier.apply_all(
                plan_attempt(attempt_ref, job.spec, job.base, self.settings, step.create_attempt, step.node)
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
