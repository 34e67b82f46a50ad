"""Every kopf index of the operator, declared once, and typed accessors to read them.

kopf keeps each index up to date from its watches and passes it to every handler
as a keyword argument named after the index's id. Handlers never read those
keywords by name: `Indexes.from_kwargs(kwargs)` picks them up once and its
methods say what each index holds. One index per resource kind where the
handlers can share its values:

- `base_models`: BaseModels, (namespace, name) -> (uid, spec)
- `adapters_by_base`: LoRAAdapters, (namespace, spec.baseModel) -> index essentials
- `worker_placements`: WorkerPlacements, (namespace, spec.baseModel) -> index essentials
- `worker_sets`: worker StatefulSets, (namespace, BaseModel) -> index essentials
- `nodes`: nodes, name -> NodeView (GPUs, labels with the zone, usable)
- `pods`: every pod, under the keys of what reads it: ("worker", namespace, BaseModel) -> a worker
  pod's WorkerPodView (the fleet status, the placement loop); ("router", namespace, BaseModel) -> a
  router pod's FleetPod (the fleet status); ("workers", namespace, BaseModel) ->
  whether a worker is scheduled and ("node", node) -> GPUs a non-trainer pod holds there (training
  admission); ("attempt", namespace, Job) -> a trainer pod's PodView (the training status)
- `trainer_jobs`: trainer batch/v1 Jobs, (namespace, name) -> JobView
- `training_jobs`: TrainingJobs, (namespace, name) -> the body's essentials

Index functions are `async def` although they never await: kopf runs a sync one in its thread
pool, a thread hop per watch event.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import kopf

from loraplex.api import BASE_MODELS, GROUP, LORA_ADAPTERS, TRAINING_JOBS, VERSION, WORKER_PLACEMENTS
from loraplex.api.labels import (
    BASE_MODEL_LABEL,
    COMPONENT_LABEL,
    MANAGED_BY,
    ROUTER,
    TRAINER,
    TRAINER_GROUP_ANNOTATION,
    TRAINING_JOB_LABEL,
    WARM_TRAINER_LABEL,
    WORKER,
)
from loraplex.operator.fleet import FETCH_MODEL_CONTAINER
from loraplex.operator.fleet_status import FleetPod
from loraplex.operator.observe import fleet_pod, index_essentials, init_running_since
from loraplex.operator.training_status import JobView, PodView
from loraplex.operator.training_workload import HOSTNAME_LABEL, TRAINER_CONTAINER

WORKER_LABELS = {**MANAGED_BY, COMPONENT_LABEL: WORKER}
ROUTER_LABELS = {**MANAGED_BY, COMPONENT_LABEL: ROUTER}
TRAINER_LABELS = {**MANAGED_BY, COMPONENT_LABEL: TRAINER}
ZONE_LABEL = "topology.kubernetes.io/zone"

BaseKey = tuple[str, str]  # (namespace, BaseModel name)


@dataclass(frozen=True)
class WorkerPodView:
    """What the operator reads of one worker pod: what the BaseModel status reads of it (`seen`), and
    where it runs and whether it is going, for the placement loop."""

    seen: FleetPod
    node: str | None = None
    deleting: bool = False

    @property
    def name(self) -> str:
        return self.seen.name

    @property
    def healthy(self) -> bool:
        """Ready and not being deleted: the placement planner may put adapters on it."""
        return self.seen.ready and not self.deleting


class NodeView(NamedTuple):
    """What the operator reads of a node: its GPUs (extended resources), labels, whether pods may land."""

    allocatable: dict[str, int]
    labels: dict[str, str]
    usable: bool  # Ready and not cordoned

    @property
    def zone(self) -> str:
        return self.labels.get(ZONE_LABEL, "")


# Index values, from raw bodies.


def worker_pod_view(body: Mapping[str, Any]) -> WorkerPodView:
    fetching = init_running_since(body.get("status") or {}, FETCH_MODEL_CONTAINER)
    return WorkerPodView(
        seen=replace(fleet_pod(body), fetching_model_since=fetching),
        node=body.get("spec", {}).get("nodeName"),
        deleting=bool(body["metadata"].get("deletionTimestamp")),
    )


def node_view(body: Mapping[str, Any], labels: Mapping[str, str]) -> NodeView:
    status = body.get("status", {})
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []) or []
    )
    usable = ready and not body.get("spec", {}).get("unschedulable")
    return NodeView(extended(status.get("allocatable", {})), dict(labels), usable)


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
    """What the handlers read of a pod, under up to three keys:

    ("worker", ns, base model) -> a worker pod's WorkerPodView; ("router", ns, base model) -> a router
    pod's FleetPod; ("workers", ns, base model) ->
    whether that worker is scheduled and holds its GPUs; ("node", node) -> GPUs a non-trainer pod
    holds there; ("attempt", ns, job) -> the PodView of a trainer pod.
    """
    meta, status = body.get("metadata", {}), body.get("status", {}) or {}
    node = body.get("spec", {}).get("nodeName")
    phase = status.get("phase", "Pending")
    finished = phase in ("Succeeded", "Failed")
    entries: dict[Any, Any] = {}
    trainer = labels.get(COMPONENT_LABEL) == TRAINER and (
        TRAINING_JOB_LABEL in labels or WARM_TRAINER_LABEL in labels
    )
    if trainer:
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        if job:
            entries[("attempt", namespace, job)] = pod_view(body)
        return entries
    gpus = pod_requests(body)
    if node and gpus and not finished:
        entries[("node", node)] = gpus
    if labels.get(COMPONENT_LABEL) == WORKER and BASE_MODEL_LABEL in labels:
        held = bool(node) and not finished and not meta.get("deletionTimestamp")
        entries[("workers", namespace, labels[BASE_MODEL_LABEL])] = held
        if all(labels.get(label) == value for label, value in WORKER_LABELS.items()):
            entries[("worker", namespace, labels[BASE_MODEL_LABEL])] = worker_pod_view(body)
    if BASE_MODEL_LABEL in labels and all(labels.get(k) == v for k, v in ROUTER_LABELS.items()):
        entries[("router", namespace, labels[BASE_MODEL_LABEL])] = fleet_pod(body)
    return entries


def pod_view(body: Mapping[str, Any]) -> PodView:
    """A trainer pod as the training status reads it."""
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
    annotations = body["metadata"].get("annotations") or {}
    return JobView(
        name=body["metadata"]["name"],
        node=node_selector.get(HOSTNAME_LABEL),
        group=annotations.get(TRAINER_GROUP_ANNOTATION),
        deleting=bool(body["metadata"].get("deletionTimestamp")),
        suspended=bool(spec.get("suspend")),
        complete="Complete" in conditions or "SuccessCriteriaMet" in conditions,
        failed=bool(failed),
        failure_reason=str(failed.get("reason", "")),
        failure_message=str(failed.get("message", "")),
    )


def training_job_essentials(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata", {})
    kept = ("name", "namespace", "uid", "generation", "creationTimestamp", "deletionTimestamp")
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: metadata[k] for k in kept if k in metadata},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def register(registry: kopf.OperatorRegistry) -> None:
    """Declare every index of the operator on `registry` (once: kopf refuses an id twice)."""

    @kopf.index(GROUP, VERSION, BASE_MODELS, id="base_models", registry=registry)
    async def base_models(
        spec: kopf.Spec, name: str, namespace: str | None, uid: str, **_: Any
    ) -> dict[Any, Any]:
        return {(str(namespace), name): (uid, dict(spec))}

    @kopf.index(GROUP, VERSION, LORA_ADAPTERS, id="adapters_by_base", registry=registry)
    async def adapters_by_base(
        body: kopf.Body, spec: kopf.Spec, namespace: str | None, **_: Any
    ) -> dict[Any, Any]:
        return {(str(namespace), spec.get("baseModel", "")): index_essentials(body)}

    @kopf.index(GROUP, VERSION, WORKER_PLACEMENTS, id="worker_placements", registry=registry)
    async def worker_placements(
        body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any
    ) -> dict[Any, Any]:
        return {(str(namespace), spec.get("baseModel", "")): index_essentials(body)}

    @kopf.index("apps", "v1", "statefulsets", labels=WORKER_LABELS, id="worker_sets", registry=registry)
    async def worker_sets(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> dict[Any, Any]:
        return {(str(namespace), labels[BASE_MODEL_LABEL]): index_essentials(body)}

    @kopf.index("", "v1", "nodes", id="nodes", registry=registry)
    async def nodes(name: str, body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[Any, Any]:
        return {name: node_view(body, labels)}

    @kopf.index("", "v1", "pods", id="pods", registry=registry)
    async def pods(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> dict[Any, Any]:
        return pod_entries(body, str(namespace), dict(labels))

    @kopf.index("batch", "v1", "jobs", labels=TRAINER_LABELS, id="trainer_jobs", registry=registry)
    async def trainer_jobs(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
        return {(str(namespace), name): job_view(body)}

    @kopf.index(GROUP, VERSION, TRAINING_JOBS, id="training_jobs", registry=registry)
    async def training_jobs(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
        return {(str(namespace), name): training_job_essentials(body)}


# The ids `register` declares, in the order of Indexes' fields (tests check the two agree).
INDEX_IDS = (
    "base_models",
    "adapters_by_base",
    "worker_placements",
    "worker_sets",
    "nodes",
    "pods",
    "trainer_jobs",
    "training_jobs",
)


def _empty() -> Any:
    return {}  # an index no handler was given (a test's stand-in): read as empty


@dataclass(frozen=True)
class Indexes:
    """The operator's indexes as one handler call sees them (kopf's live stores, not copies).

    Read through the methods: each returns a snapshot (a list), since kopf's stores change under a
    loop that iterates them. A handler registered without an index (a test's stand-in) sees it empty.
    """

    base_models: kopf.Index[BaseKey, tuple[str, dict[str, Any]]] = field(default_factory=_empty)
    adapters_by_base: kopf.Index[BaseKey, dict[str, Any]] = field(default_factory=_empty)
    worker_placements: kopf.Index[BaseKey, dict[str, Any]] = field(default_factory=_empty)
    worker_sets: kopf.Index[BaseKey, dict[str, Any]] = field(default_factory=_empty)
    nodes: kopf.Index[str, NodeView] = field(default_factory=_empty)
    pods: kopf.Index[Any, Any] = field(default_factory=_empty)
    trainer_jobs: kopf.Index[tuple[str, str], JobView] = field(default_factory=_empty)
    training_jobs: kopf.Index[tuple[str, str], dict[str, Any]] = field(default_factory=_empty)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Indexes:
        """kopf passes each index as a keyword argument named after its id: the one place they are read."""
        return cls(**{name: kwargs[name] for name in INDEX_IDS if name in kwargs})

    # BaseModels

    def base_model_entries(self, key: BaseKey) -> list[tuple[str, dict[str, Any]]]:
        """(uid, spec) of the BaseModel `key`: one entry, or none when it does not exist."""
        return list(self.base_models.get(key, []))

    def base_model_specs(self, key: BaseKey) -> list[dict[str, Any]]:
        return [spec for _, spec in self.base_model_entries(key)]

    def base_model_keys(self) -> list[BaseKey]:
        return sorted(self.base_models)

    # What each BaseModel has: its adapters, WorkerPlacements, worker StatefulSet and pods.

    def adapters(self, key: BaseKey) -> list[dict[str, Any]]:
        """The LoRAAdapters naming BaseModel `key` (index essentials, being deleted ones included)."""
        return list(self.adapters_by_base.get(key, []))

    def placements(self, key: BaseKey) -> list[dict[str, Any]]:
        """BaseModel `key`'s WorkerPlacements (index essentials: spec and the agents' status)."""
        return list(self.worker_placements.get(key, []))

    def worker_statefulsets(self, key: BaseKey) -> list[dict[str, Any]]:
        """BaseModel `key`'s worker StatefulSet (index essentials): one, or none before it exists."""
        return list(self.worker_sets.get(key, []))

    def workers(self, key: BaseKey) -> list[WorkerPodView]:
        """BaseModel `key`'s worker pods."""
        return list(self.pods.get(("worker", *key), []))

    def routers(self, key: BaseKey) -> list[FleetPod]:
        """BaseModel `key`'s router pods, as its status reads them."""
        return list(self.pods.get(("router", *key), []))

    # Nodes

    def node(self, name: str) -> NodeView | None:
        return next(iter(self.nodes.get(name, [])), None)

    def node_zone(self, name: str) -> str:
        """The node's topology zone ("" when unknown or unlabelled)."""
        found = self.node(name)
        return found.zone if found is not None else ""

    def all_nodes(self) -> Iterator[tuple[str, NodeView]]:
        for name in sorted(self.nodes):
            for view in list(self.nodes.get(name, [])):
                yield name, view

    # Training

    def gpus_held_on(self, node: str) -> list[dict[str, int]]:
        """GPUs each unfinished non-trainer pod on `node` holds."""
        return list(self.pods.get(("node", node), []))

    def scheduled_workers(self, key: BaseKey) -> list[bool]:
        """For each of BaseModel `key`'s worker pods: whether it is scheduled and holds its GPUs."""
        return list(self.pods.get(("workers", *key), []))

    def attempt_pods(self, namespace: str, job: str) -> list[PodView]:
        """The pods of trainer Job `job`."""
        return list(self.pods.get(("attempt", namespace, job), []))

    def trainer_job(self, namespace: str, name: str) -> list[JobView]:
        return list(self.trainer_jobs.get((namespace, name), []))

    def warm_trainers(self) -> list[tuple[str, JobView]]:
        """(namespace, Job) of every warm trainer's Job: those that name their trainer group."""
        return [
            (namespace, view)
            for (namespace, _), views in list(self.trainer_jobs.items())
            for view in list(views)
            if view.group is not None
        ]

    def training_job_keys(self) -> list[tuple[str, str]]:
        return sorted(self.training_jobs)

    def training_job_bodies(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        return list(self.training_jobs.get(key, []))
