"""kopf handlers for BaseModel: thin glue from events to the planners and the applier.

Level-based: every pass rebuilds the whole fleet plan from the spec and lets
the applier skip what is already right, so running twice changes nothing and
a restart mid-way loses nothing. Live state comes from kopf indexes of the
worker StatefulSets and pods (kept by watches), read by a per-BaseModel timer
that writes status only when it changed. The index lags behind the operator's
own writes, so the status calls the fleet ready only once the indexed worker
StatefulSet carries the content hash of the one this generation plans.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from loraplex.api import GROUP, VERSION
from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator import metrics
from loraplex.operator.apply import Applier
from loraplex.operator.fleet import (
    BASE_MODEL_LABEL,
    COMPONENT_LABEL,
    MANAGED_BY,
    BaseModelRef,
    api_key_secret,
    content_hash,
    plan_fleet,
    worker_selector,
    worker_statefulset,
)
from loraplex.operator.fleet_scale import FleetTargets, workers_to_run
from loraplex.operator.fleet_status import WorkerPod, plan_base_model_status, status_changed
from loraplex.operator.observe import fleet_observation, index_essentials, running_workers, worker_pod
from loraplex.operator.settings import OperatorSettings

WORKER_LABELS = {**MANAGED_BY, COMPONENT_LABEL: "worker"}


def register(
    registry: kopf.OperatorRegistry, settings: OperatorSettings, applier: Applier, targets: FleetTargets
) -> None:
    """Attach the BaseModel handlers, indexes and timer to `registry`.

    `targets` holds the worker counts the placement loops decided (see fleet_scale).
    """

    @kopf.index("apps", "v1", "statefulsets", labels=WORKER_LABELS, id="worker_sets", registry=registry)
    async def worker_sets(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> dict[Any, Any]:
        return {(str(namespace), labels[BASE_MODEL_LABEL]): index_essentials(body)}

    @kopf.index("", "v1", "pods", labels=WORKER_LABELS, id="worker_pods", registry=registry)
    async def worker_pods(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> dict[Any, Any]:
        return {(str(namespace), labels[BASE_MODEL_LABEL]): worker_pod(body)}

    @kopf.on.resume(GROUP, VERSION, "basemodels", id="fleet", registry=registry)
    @kopf.on.create(GROUP, VERSION, "basemodels", id="fleet", registry=registry)
    @kopf.on.update(GROUP, VERSION, "basemodels", field="spec", id="fleet", registry=registry)
    def reconcile_fleet(
        spec: kopf.Spec,
        name: str,
        namespace: str | None,
        uid: str,
        meta: kopf.Meta,
        status: kopf.Status,
        patch: kopf.Patch,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        with metrics.reconciling("BaseModel"):
            model = _parse_spec(spec)
            ref = BaseModelRef(name, str(namespace), uid)
            if model.engine.api_key_secret_ref is None and applier.create_if_missing(
                api_key_secret(ref, secrets.token_urlsafe(32))
            ):
                logger.info(f"Created vLLM API key secret for {namespace}/{name}")
            key = (str(namespace), name)
            running = running_workers(list(kwargs["worker_sets"].get(key, [])))
            workers = workers_to_run(model, targets.get(key), running)
            writes = applier.apply_all(plan_fleet(ref, model, settings, workers))
            if writes:
                logger.info(f"Applied worker fleet of {namespace}/{name} writes={writes}")
            write_fleet_status(model, settings, ref, meta, status, patch, FleetIndexes.of(kwargs))

    @kopf.timer(
        GROUP,
        VERSION,
        "basemodels",
        interval=settings.status_interval_seconds,
        id="fleet-status",
        registry=registry,
    )
    def refresh_fleet_status(
        spec: kopf.Spec,
        name: str,
        namespace: str | None,
        uid: str,
        meta: kopf.Meta,
        status: kopf.Status,
        patch: kopf.Patch,
        **kwargs: Any,
    ) -> None:
        try:
            model = BaseModelSpec.model_validate(dict(spec))
        except ValidationError:
            return  # reconcile_fleet reports it
        ref = BaseModelRef(name, str(namespace), uid)
        write_fleet_status(model, settings, ref, meta, status, patch, FleetIndexes.of(kwargs))


def _parse_spec(spec: Mapping[str, Any]) -> BaseModelSpec:
    try:
        return BaseModelSpec.model_validate(dict(spec))
    except ValidationError as error:
        raise kopf.PermanentError(f"Invalid spec: {error}") from error


@dataclass(frozen=True)
class FleetIndexes:
    """The kopf indexes of worker StatefulSets, pods and WorkerPlacements, keyed by (namespace, BaseModel)."""

    worker_sets: kopf.Index[tuple[str, str], dict[str, Any]]
    worker_pods: kopf.Index[tuple[str, str], WorkerPod]
    worker_placements: kopf.Index[tuple[str, str], dict[str, Any]]

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> FleetIndexes:
        """kopf passes each index as a keyword argument named after its function."""
        return cls(kwargs["worker_sets"], kwargs["worker_pods"], kwargs["worker_placements"])


def write_fleet_status(
    model: BaseModelSpec,
    settings: OperatorSettings,
    ref: BaseModelRef,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    indexes: FleetIndexes,
) -> None:
    """Fill `patch` with the BaseModel's status as the indexes show the fleet, if anything changed."""
    key = (ref.namespace, ref.name)
    sets = list(indexes.worker_sets.get(key, []))
    observation = fleet_observation(
        sets[0] if sets else None,
        list(indexes.worker_pods.get(key, [])),
        list(indexes.worker_placements.get(key, [])),
    )
    # What this generation's worker StatefulSet looks like at the worker count the index shows (a scale
    # the placement loop decided is not a roll), to tell a StatefulSet the watch has not caught up with.
    planned_hash = content_hash(worker_statefulset(ref, model, settings, observation.replicas))
    current = dict(status)
    generation = int(meta.get("generation", 0))
    planned = plan_base_model_status(
        model, generation, observation, current, _now(), worker_selector(ref.name), planned_hash
    )
    metrics.WORKERS.labels(key[1], "desired").set(planned["desiredWorkers"])
    metrics.WORKERS.labels(key[1], "ready").set(planned["readyWorkers"])
    if status_changed(current, planned):
        patch.status.update(planned)
        metrics.API_WRITES.labels("BaseModel", "patch-status").inc()  # kopf sends it after the handler


def _now() -> datetime:
    return datetime.now(UTC)
