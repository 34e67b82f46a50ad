"""kopf glue for TrainingJob: indexes of nodes, pods, Jobs and BaseModels, and one admission pass.

GPUs are shared by every namespace, so admission is one pass over all
TrainingJobs, run at most once per `LORAPLEX_TRAINING_INTERVAL` by whichever
TrainingJob's timer fires first (timers run only on jobs with something left
to do, including succeeded jobs with a `spec.schedule`, and pause with
peering). A pass reads only kopf indexes (watches), asks
`training_status` what each job's status and next step are, asks
`training_admission` which queued jobs start on which node, then applies: the
attempt's ConfigMap and Job, the output LoRAAdapter on success, the status
(only when it changed) and Events. The statuses it just wrote are kept for a
few seconds so the next pass never admits a job twice while the watch catches up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from loraplex.api import GROUP, VERSION
from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator import metrics
from loraplex.operator.apply import Applier
from loraplex.operator.fleet import BASE_MODEL_LABEL, COMPONENT_LABEL, MANAGED_BY
from loraplex.operator.fleet_scale import FleetTargets, workers_to_run
from loraplex.operator.fleet_status import status_changed
from loraplex.operator.observe import running_workers
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_admission import Cluster, Node, QueuedJob, ServingDemand, plan_admission
from loraplex.operator.training_status import (
    TERMINAL,
    VALIDATION_REASONS,
    JobView,
    PodView,
    Step,
    output_conflict,
    output_refused,
    plan_training,
)
from loraplex.operator.training_workload import (
    HOSTNAME_LABEL,
    TRAINER_CONTAINER,
    TRAINING_JOB_LABEL,
    Store,
    TrainingJobRef,
    attempt_name,
    checkpoint_uri,
    output_adapter,
    plan_attempt,
    trainer_access,
)

TRAINER_LABELS = {**MANAGED_BY, COMPONENT_LABEL: "trainer"}
RECENT_SECONDS = 5.0  # how long a status this operator wrote outranks the (maybe stale) index


def register(
    registry: kopf.OperatorRegistry,
    settings: OperatorSettings,
    api: client.ApiClient,
    applier: Applier,
    targets: FleetTargets,
) -> None:
    """Attach the TrainingJob indexes and the admission pass to `registry`.

    `targets` holds the worker counts the BaseModels' placement loops decided: admission keeps
    the GPUs those workers need free.
    """
    loop = TrainingLoop(settings, client.CustomObjectsApi(api), applier, targets)

    @kopf.index("", "v1", "nodes", id="training_nodes", registry=registry)
    async def training_nodes(name: str, body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[Any, Any]:
        status = body.get("status", {})
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []) or []
        )
        usable = ready and not body.get("spec", {}).get("unschedulable")
        return {name: (extended(status.get("allocatable", {})), dict(labels), usable)}

    @kopf.index("", "v1", "pods", id="training_pods", registry=registry)
    async def training_pods(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> dict[Any, Any]:
        return pod_entries(body, str(namespace), dict(labels))

    @kopf.index("batch", "v1", "jobs", labels=TRAINER_LABELS, id="trainer_jobs", registry=registry)
    async def trainer_jobs(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
        return {(str(namespace), name): job_view(body)}

    @kopf.index(GROUP, VERSION, "basemodels", id="training_base_models", registry=registry)
    async def training_base_models(
        spec: kopf.Spec, name: str, namespace: str | None, uid: str, **_: Any
    ) -> dict[Any, Any]:
        return {(str(namespace), name): (uid, dict(spec))}

    @kopf.index(GROUP, VERSION, "trainingjobs", id="training_jobs", registry=registry)
    async def training_jobs(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
        metadata = body.get("metadata", {})
        kept = ("name", "namespace", "uid", "generation", "creationTimestamp", "deletionTimestamp")
        return {
            (str(namespace), name): {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "metadata": {k: metadata[k] for k in kept if k in metadata},
                "spec": dict(body.get("spec") or {}),
                "status": dict(body.get("status") or {}),
            }
        }

    def unfinished(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
        """Jobs with something left to do: unfinished, fixable, or a success that runs again."""
        if status.get("phase") not in TERMINAL:
            return True
        if status.get("phase") == "Succeeded" and spec.get("schedule"):
            return True
        ready = [c for c in status.get("conditions", []) or [] if c.get("type") == "Ready"]
        return bool(ready) and ready[0].get("reason") in VALIDATION_REASONS

    @kopf.timer(
        GROUP, VERSION, "trainingjobs", id="training", interval=settings.training_interval_seconds,
        when=unfinished, registry=registry,
    )  # fmt: skip
    def training(logger: kopf.Logger, **kwargs: Any) -> None:
        loop.run(Indexes.of(kwargs), logger)

    @kopf.on.event(GROUP, VERSION, "trainingjobs", id="training-created", registry=registry)
    def training_created(type: str | None, logger: kopf.Logger, **kwargs: Any) -> None:
        """A new job is judged (and maybe admitted) at once rather than at its timer's first tick.

        An event handler (not on.create): kopf then writes no bookkeeping annotations on the job.
        """
        if type == "ADDED":
            loop.run(Indexes.of(kwargs), logger, force=True)


def extended(resources: Mapping[str, Any]) -> dict[str, int]:
    """The extended resources (GPUs: `vendor/name`) of a resource list, as integers."""
    counts = {}
    for resource, quantity in resources.items():
        if "/" in resource:
            try:
                counts[resource] = int(str(quantity))
            except ValueError:
                continue
    return counts


def pod_requests(body: Mapping[str, Any]) -> dict[str, int]:
    """Extended resources a pod holds: the sum over containers, or the largest init container."""
    spec = body.get("spec", {})
    total: dict[str, int] = {}
    for container in spec.get("containers", []) or []:
        resources = container.get("resources") or {}
        wanted = extended({**(resources.get("limits") or {}), **(resources.get("requests") or {})})
        for resource, count in wanted.items():
            total[resource] = total.get(resource, 0) + count
    for container in spec.get("initContainers", []) or []:
        resources = container.get("resources") or {}
        wanted = extended({**(resources.get("limits") or {}), **(resources.get("requests") or {})})
        for resource, count in wanted.items():
            total[resource] = max(total.get(resource, 0), count)
    return total


def pod_entries(body: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> dict[Any, Any]:
    """What the training pass needs of a pod, under up to two keys:

    ("node", node) -> GPUs a non-trainer pod holds there; ("workers", ns, base model) -> whether a
    worker pod is scheduled; ("attempt", ns, job) -> the PodView of a trainer pod.
    """
    meta, status = body.get("metadata", {}), body.get("status", {}) or {}
    node = body.get("spec", {}).get("nodeName")
    phase = status.get("phase", "Pending")
    finished = phase in ("Succeeded", "Failed")
    entries: dict[Any, Any] = {}
    trainer = labels.get(COMPONENT_LABEL) == "trainer" and TRAINING_JOB_LABEL in labels
    if trainer:
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        if job:
            entries[("attempt", namespace, job)] = _pod_view(body)
        return entries
    gpus = pod_requests(body)
    if node and gpus and not finished:
        entries[("node", node)] = gpus
    if labels.get(COMPONENT_LABEL) == "worker" and BASE_MODEL_LABEL in labels:
        held = bool(node) and not finished and not meta.get("deletionTimestamp")
        entries[("workers", namespace, labels[BASE_MODEL_LABEL])] = held
    return entries


def _pod_view(body: Mapping[str, Any]) -> PodView:
    status = body.get("status", {}) or {}
    disrupted = any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        for c in status.get("conditions", []) or []
    )
    exit_code, message = None, None
    for container in status.get("containerStatuses", []) or []:
        if container.get("name") != TRAINER_CONTAINER:
            continue
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            exit_code = terminated.get("exitCode")
            message = terminated.get("message")
    return PodView(
        name=body["metadata"]["name"],
        node=body.get("spec", {}).get("nodeName"),
        phase=status.get("phase", "Pending"),
        disrupted=disrupted,
        exit_code=exit_code,
        message=message,
        deleting=bool(body["metadata"].get("deletionTimestamp")),
    )


def job_view(body: Mapping[str, Any]) -> JobView:
    spec, status = body.get("spec", {}), body.get("status", {}) or {}
    conditions = {c.get("type"): c for c in status.get("conditions", []) or [] if c.get("status") == "True"}
    failed = conditions.get("Failed") or conditions.get("FailureTarget") or {}
    node_selector = spec.get("template", {}).get("spec", {}).get("nodeSelector") or {}
    return JobView(
        name=body["metadata"]["name"],
        node=node_selector.get(HOSTNAME_LABEL),
        suspended=bool(spec.get("suspend")),
        complete="Complete" in conditions or "SuccessCriteriaMet" in conditions,
        failed=bool(failed),
        failure_reason=str(failed.get("reason", "")),
        failure_message=str(failed.get("message", "")),
    )


@dataclass(frozen=True)
class Indexes:
    nodes: kopf.Index[str, tuple[dict[str, int], dict[str, str], bool]]
    pods: kopf.Index[Any, Any]
    jobs: kopf.Index[tuple[str, str], JobView]
    base_models: kopf.Index[tuple[str, str], tuple[str, dict[str, Any]]]
    training_jobs: kopf.Index[tuple[str, str], dict[str, Any]]
    worker_sets: kopf.Index[tuple[str, str], dict[str, Any]]  # basemodel_handlers' index

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Indexes:
        return cls(
            kwargs["training_nodes"],
            kwargs["training_pods"],
            kwargs["trainer_jobs"],
            kwargs["training_base_models"],
            kwargs["training_jobs"],
            kwargs["worker_sets"],
        )


@dataclass
class _Job:
    """One TrainingJob as a pass sees it."""

    body: Mapping[str, Any]
    ref: TrainingJobRef
    spec: TrainingJobSpec
    base: BaseModelSpec | None
    base_uid: str | None
    status: dict[str, Any]
    view: JobView | None


class TrainingLoop:
    """The admission pass and what it remembers between passes (statuses it just wrote)."""

    def __init__(
        self,
        settings: OperatorSettings,
        custom: client.CustomObjectsApi,
        applier: Applier,
        targets: FleetTargets,
    ) -> None:
        self.settings = settings
        self.targets = targets
        self.custom = custom
        self.applier = applier
        self.store = Store.parse(settings.training_store)
        self.lock = threading.Lock()
        self.last_pass = 0.0
        self.recent: dict[str, tuple[float, dict[str, Any]]] = {}  # uid -> (when written, status)

    def run(self, indexes: Indexes, logger: kopf.Logger, force: bool = False) -> None:
        with self.lock:
            started = time.monotonic()
            if not force and started - self.last_pass < self.settings.training_interval_seconds * 0.9:
                return
            self.last_pass = started
            with metrics.reconciling("TrainingJob"):  # one pass reconciles every TrainingJob at once
                self._pass(indexes, logger)
            metrics.TRAINING_PASS_SECONDS.observe(time.monotonic() - started)

    def _pass(self, indexes: Indexes, logger: kopf.Logger) -> None:
        now = datetime.now(UTC)
        cutoff = time.monotonic() - RECENT_SECONDS
        self.recent = {uid: entry for uid, entry in self.recent.items() if entry[0] >= cutoff}
        jobs = list(self._jobs(indexes))
        steps = {key: self._plan(job, None, now) for key, job in jobs}
        queue = [
            QueuedJob(
                key=f"{job.ref.namespace}/{job.ref.name}",
                priority=job.spec.priority,
                created=_created(job.body),
                resource=job.base.resources.gpu_resource_name,
                gpus=job.spec.resources.gpu,
                node_selector=dict(job.base.node_selector),
            )
            for key, job in jobs
            if job.base is not None and _waiting_for_capacity(steps[key])
        ]
        plan = plan_admission(self._cluster(indexes, jobs, steps), queue)
        by_key = dict(jobs)
        for queued_key, node in plan.admitted.items():
            namespace, name = queued_key.split("/", 1)
            steps[(namespace, name)] = self._plan(by_key[(namespace, name)], node, now)
        phases: dict[str, int] = {p: 0 for p in ("Queued", "Running", "Preempted", "Succeeded", "Failed")}
        for key, job in jobs:
            step = self._apply(job, steps[key], logger)
            phase = step.status.get("phase")
            if phase in phases:
                phases[phase] += 1
        for phase, count in phases.items():
            metrics.TRAINING_JOBS.labels(phase).set(count)

    def _jobs(self, indexes: Indexes) -> Iterable[tuple[tuple[str, str], _Job]]:
        for key in sorted(indexes.training_jobs):
            for body in list(indexes.training_jobs.get(key, [])):
                meta = body["metadata"]
                if meta.get("deletionTimestamp"):
                    continue
                try:
                    spec = TrainingJobSpec.model_validate(body["spec"])
                except ValidationError:
                    continue  # admission refuses such specs; an old object is left alone
                status = dict(body.get("status") or {})
                recent = self.recent.get(meta["uid"])
                if recent is not None and recent[1] != status:
                    status = dict(recent[1])
                base, base_uid = None, None
                for uid, base_spec in indexes.base_models.get((key[0], spec.base_model), []):
                    try:
                        base, base_uid = BaseModelSpec.model_validate(base_spec), uid
                    except ValidationError:
                        base = None
                generation = int(status.get("observedGeneration") or meta.get("generation", 0))
                run = int(status.get("run") or 0)
                ref = TrainingJobRef(meta["name"], key[0], meta["uid"], generation, run)
                attempts = int(status.get("attempts") or 0)
                view = self._view(indexes, ref, attempts)
                yield key, _Job(body, ref, spec, base, base_uid, status, view)

    @staticmethod
    def _view(indexes: Indexes, ref: TrainingJobRef, attempt: int) -> JobView | None:
        name = attempt_name(ref, attempt)
        views = list(indexes.jobs.get((ref.namespace, name), []))
        if not views:
            return None
        pods = tuple(sorted(indexes.pods.get(("attempt", ref.namespace, name), []), key=lambda p: p.name))
        view: JobView = views[0]
        return JobView(
            view.name, view.node, view.suspended, view.complete, view.failed,
            view.failure_reason, view.failure_message, pods,
        )  # fmt: skip

    def _plan(self, job: _Job, node: str | None, now: datetime) -> Step:
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
            max_attempts=self.settings.training_max_attempts,
            now=now,
        )
        if step.status.get("phase") in ("Running", "Preempted", "Succeeded"):
            generation = int(step.status.get("observedGeneration") or job.ref.generation)
            run = int(step.status.get("run") or 0)
            ref = TrainingJobRef(job.ref.name, job.ref.namespace, job.ref.uid, generation, run)
            step.status["checkpointUri"] = f"{checkpoint_uri(ref, self.store, local=False)}/{job.ref.name}"
        return step

    def _cluster(
        self,
        indexes: Indexes,
        jobs: list[tuple[tuple[str, str], _Job]],
        steps: Mapping[tuple[str, str], Step],
    ) -> Cluster:
        nodes = [
            Node(name, allocatable, labels)
            for name in sorted(indexes.nodes)
            for allocatable, labels, usable in indexes.nodes.get(name, [])
            if usable
        ]
        serving_used: dict[str, dict[str, int]] = {}
        for node in nodes:
            held: dict[str, int] = {}
            for gpus in indexes.pods.get(("node", node.name), []):
                for resource, count in gpus.items():
                    held[resource] = held.get(resource, 0) + count
            serving_used[node.name] = held
        trainer_used: dict[str, dict[str, int]] = {}
        for key, job in jobs:
            status = steps[key].status
            node_name = (status.get("placement") or {}).get("node")
            if status.get("phase") == "Running" and node_name and job.base is not None:
                per_node = trainer_used.setdefault(node_name, {})
                resource = job.base.resources.gpu_resource_name
                per_node[resource] = per_node.get(resource, 0) + job.spec.resources.gpu
        serving = serving_demands(indexes.base_models, indexes.pods, indexes.worker_sets, self.targets)
        return Cluster(nodes, serving_used, trainer_used, serving)

    def _apply(self, job: _Job, step: Step, logger: kopf.Logger) -> Step:
        """Carry the step out; the step carried out (an output adapter that cannot take the job's
        revision fails the job, before an attempt starts or when it would publish)."""
        ref, namespace, name = job.ref, job.ref.namespace, job.ref.name
        if step.create_attempt is not None:
            conflict = output_conflict(job.spec, self._output_adapter(job), None)
            if conflict is not None:
                step = output_refused(
                    step.status, job.status.get("adapterRevision"), datetime.now(UTC), *conflict
                )
        if step.create_attempt is not None and job.base is not None and job.base_uid is not None:
            generation = int(step.status.get("observedGeneration") or ref.generation)
            run = int(step.status.get("run") or 0)
            attempt_ref = TrainingJobRef(name, namespace, ref.uid, generation, run)
            self.applier.apply_all(trainer_access(job.spec.base_model, namespace, job.base_uid))
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
            refused = self._publish(job, step.publish.uri, step.publish.sha256, logger)
            if refused is not None:
                step = output_refused(
                    step.status, job.status.get("adapterRevision"), datetime.now(UTC), *refused
                )
        if status_changed(job.status, step.status):
            patch = {k: v for k, v in step.status.items() if job.status.get(k) != v}
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "trainingjobs", name, {"status": patch}
            )
            metrics.API_WRITES.labels("TrainingJob", "patch-status").inc()
            self.recent[ref.uid] = (time.monotonic(), {**job.status, **step.status})
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

    def _output_adapter(self, job: _Job) -> dict[str, Any] | None:
        """The job's output LoRAAdapter as it is now; None when there is none."""
        namespace, name = job.ref.namespace, job.spec.output.adapter_name
        try:
            return cast(
                dict[str, Any],
                self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", name),
            )
        except ApiException as error:
            if error.status != 404:
                raise
            return None

    def _publish(self, job: _Job, uri: str, sha256: str, logger: kopf.Logger) -> tuple[str, str] | None:
        """Create or update the output LoRAAdapter with the new revision (workers then swap to it).
        (reason, message) when it may not: the LoRAAdapter of that name belongs to another base model."""
        namespace, name = job.ref.namespace, job.spec.output.adapter_name
        public = self.store.public(uri)
        live = self._output_adapter(job)
        if live is None:
            wanted = output_adapter(namespace, job.spec, public, sha256, job.ref.name)
            self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", wanted)
            metrics.API_WRITES.labels("LoRAAdapter", "create").inc()
            logger.info(
                f"Created adapter {namespace}/{name} from training job {job.ref.name} sha256={sha256}"
            )
            return None
        conflict = output_conflict(job.spec, live, f"{public} (sha256 {sha256})")
        if conflict is not None:
            return conflict
        source = live["spec"].get("source") or {}
        if source.get("sha256") == sha256 and source.get("uri") == public:
            return None
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "loraadapters", name,
            {"spec": {"source": {"uri": public, "sha256": sha256}, "rank": job.spec.lora.rank}},
        )  # fmt: skip
        metrics.API_WRITES.labels("LoRAAdapter", "patch").inc()
        logger.info(
            f"Updated adapter {namespace}/{name} to a new revision from {job.ref.name} sha256={sha256}"
        )
        return None


def serving_demands(
    base_models: Mapping[tuple[str, str], Iterable[tuple[str, dict[str, Any]]]],
    pods: Mapping[Any, Iterable[Any]],
    worker_sets: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
    targets: FleetTargets,
) -> list[ServingDemand]:
    """The GPUs each BaseModel's desired but unscheduled workers still need, from the indexes.

    The desired count is the placement loop's decision; before its first pass (a fresh operator)
    the worker StatefulSet's replicas, as for the fleet handler, rather than replicas.min.
    """
    serving = []
    for (namespace, name), entries in sorted(base_models.items()):
        for _, base_spec in entries:
            try:
                base = BaseModelSpec.model_validate(base_spec)
            except ValidationError:
                continue
            key = (namespace, name)
            scheduled = sum(1 for held in pods.get(("workers", *key), []) if held)
            desired = workers_to_run(base, targets.get(key), running_workers(list(worker_sets.get(key, []))))
            serving.append(
                ServingDemand(
                    f"{namespace}/{name}",
                    base.resources.gpu_resource_name,
                    base.resources.gpu,
                    max(desired - scheduled, 0),
                    dict(base.node_selector),
                )
            )
    return serving


def _waiting_for_capacity(step: Step) -> bool:
    ready = [c for c in step.status.get("conditions", []) if c.get("type") == "Ready"]
    return (
        step.status.get("phase") == "Queued"
        and step.create_attempt is None
        and bool(ready)
        and ready[0].get("reason") == "WaitingForCapacity"
    )


def _created(body: Mapping[str, Any]) -> datetime:
    stamp = body["metadata"].get("creationTimestamp")
    if not stamp:
        return datetime.min.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
