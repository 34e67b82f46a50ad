"""kopf handlers for BaseModel: thin glue from events to the planners and the applier.

Level-based: every pass rebuilds the whole fleet plan from the spec and lets
the applier skip what is already right, so running twice changes nothing and
a restart mid-way loses nothing. Live state comes from kopf indexes of the
worker StatefulSets and pods (kept by watches), and for a pod stuck setting up
from its Warning Events (pod_events: a volume that will not mount), read by a
per-BaseModel timer that writes status only when it changed. The index lags
behind the operator's own writes, so the status calls the fleet ready only once
the indexed worker StatefulSet carries the content hash of the one this
generation plans.

These handlers are the one writer of the worker StatefulSet: its template on a
spec change (the fleet handler), its replicas whenever the BaseModel's placement
loop decided another worker count (FleetTargets; the status timer applies it,
with a `Scaled` Event).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from loraplex.api import BASE_MODELS, GROUP, VERSION
from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator import metrics
from loraplex.operator.apply import Applier
from loraplex.operator.fleet import (
    BaseModelRef,
    api_key_secret,
    content_hash,
    owned_by,
    plan_fleet,
    worker_selector,
    worker_statefulset,
)
from loraplex.operator.fleet_scale import FleetTargets, scaling_message, workers_to_run
from loraplex.operator.fleet_status import FleetPod, newly_stalled, plan_base_model_status, status_changed
from loraplex.operator.indexes import Indexes
from loraplex.operator.observe import fleet_observation, running_workers
from loraplex.operator.pod_events import PodSetupEvents
from loraplex.operator.settings import OperatorSettings


def register(
    registry: kopf.OperatorRegistry,
    settings: OperatorSettings,
    api: client.ApiClient,
    applier: Applier,
    targets: FleetTargets,
) -> None:
    """Attach the BaseModel handlers and timer to `registry` (they read the indexes of operator/indexes.py).

    `targets` holds the worker counts the placement loops decided (see fleet_scale): these
    handlers apply them to the worker StatefulSet.
    """
    refusals: dict[tuple[str, str], str] = {}  # BaseModel -> the API server's refusal of its fleet
    setup_events = PodSetupEvents(client.CoreV1Api(api))  # why a pod's volumes will not mount

    @kopf.on.resume(GROUP, VERSION, BASE_MODELS, id="fleet", registry=registry)
    @kopf.on.create(GROUP, VERSION, BASE_MODELS, id="fleet", registry=registry)
    @kopf.on.update(GROUP, VERSION, BASE_MODELS, field="spec", id="fleet", registry=registry)
    def reconcile_fleet(
        spec: kopf.Spec,
        name: str,
        namespace: str | None,
        uid: str,
        patch: kopf.Patch,
        body: kopf.Body,
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
            indexes = Indexes.from_kwargs(kwargs)
            running = running_workers(indexes.worker_statefulsets(key))
            workers = workers_to_run(model, targets.get(key), running)
            fleet = FleetIndexes.of(indexes, key, setup_events)
            try:
                writes = applier.apply_all(plan_fleet(ref, model, settings, workers))
            except ApiException as error:
                refused = refusal(error)
                if refused is None:
                    raise
                refusals[key] = refused  # the status timer keeps saying so until an apply succeeds
                write_fleet_status(model, settings, ref, body, patch, fleet, refused)
                raise kopf.TemporaryError(refused, delay=REFUSED_RETRY_SECONDS) from error
            refusals.pop(key, None)
            if writes:
                logger.info(f"Applied worker fleet of {namespace}/{name} writes={writes}")
            write_fleet_status(model, settings, ref, body, patch, fleet)

    @kopf.timer(
        GROUP,
        VERSION,
        BASE_MODELS,
        interval=settings.status_interval_seconds,
        id="fleet-status",
        registry=registry,
    )
    def refresh_fleet_status(
        spec: kopf.Spec,
        name: str,
        namespace: str | None,
        uid: str,
        patch: kopf.Patch,
        body: kopf.Body,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        try:
            model = BaseModelSpec.model_validate(dict(spec))
        except ValidationError:
            return  # reconcile_fleet reports it
        ref = BaseModelRef(name, str(namespace), uid)
        indexes = Indexes.from_kwargs(kwargs)
        key = (ref.namespace, ref.name)
        scale_workers(ref, model, running_workers(indexes.worker_statefulsets(key)), body, logger)
        fleet = FleetIndexes.of(indexes, key, setup_events)
        write_fleet_status(model, settings, ref, body, patch, fleet, refusals.get(key))

    def scale_workers(
        ref: BaseModelRef, model: BaseModelSpec, running: int | None, body: kopf.Body, logger: kopf.Logger
    ) -> None:
        """Resize the worker StatefulSet to the count the placement loop decided, if it differs."""
        key = (ref.namespace, ref.name)
        decided = targets.get(key)
        if running is None or decided is None:
            return  # the fleet handler creates the StatefulSet; the placement loop has not decided yet
        workers = workers_to_run(model, decided, running)
        if workers == running:
            return
        statefulset = owned_by(ref, worker_statefulset(ref, model, settings, workers))
        try:
            written = applier.apply(statefulset)  # a no-op while the index still shows the old count
        except ApiException as error:
            logger.warning(f"Scaling the workers to {workers} failed, will retry: {error.reason}")
            return
        if not written:
            return
        message = scaling_message(model, running, workers, targets.demand(key))
        kopf.event(body, type="Normal", reason="Scaled", message=message)  # kopf.info is filtered by level
        logger.info(message)
        metrics.FLEET_SCALINGS.labels(ref.namespace, ref.name, "up" if workers > running else "down").inc()


# Answers that refuse the object itself (invalid, forbidden, bad request): applying it again as it
# is gets the same answer, so the BaseModel says so until its spec (or the cluster's policy) changes.
REFUSED_STATUSES = frozenset({400, 403, 422})
REFUSED_RETRY_SECONDS = 10.0


def refusal(error: ApiException) -> str | None:
    """What the BaseModel's Ready condition says when the API server refused an object of its fleet."""
    if error.status not in REFUSED_STATUSES:
        return None
    try:
        answer = str(json.loads(str(error.body))["message"])
    except (TypeError, ValueError, KeyError):
        answer = str(error.reason)
    return f"the API server refused an object of the fleet: {answer}"[:1024]


def _parse_spec(spec: Mapping[str, Any]) -> BaseModelSpec:
    try:
        return BaseModelSpec.model_validate(dict(spec))
    except ValidationError as error:
        raise kopf.PermanentError(f"Invalid spec: {error}") from error


@dataclass(frozen=True)
class FleetIndexes:
    """Worker StatefulSets, pods and WorkerPlacements as the indexes show them, by (namespace, BaseModel)."""

    worker_sets: Mapping[tuple[str, str], Iterable[dict[str, Any]]]
    worker_pods: Mapping[tuple[str, str], Iterable[FleetPod]]
    worker_placements: Mapping[tuple[str, str], Iterable[dict[str, Any]]]
    router_pods: Mapping[tuple[str, str], Iterable[FleetPod]]

    @classmethod
    def of(cls, indexes: Indexes, key: tuple[str, str], setup_events: PodSetupEvents) -> FleetIndexes:
        """BaseModel `key`'s part of the operator's indexes, with what the Events of its pods stuck
        setting up say."""
        namespace = key[0]
        workers = setup_events.with_volume_trouble(namespace, (pod.seen for pod in indexes.workers(key)))
        routers = setup_events.with_volume_trouble(namespace, indexes.routers(key))
        return cls(
            {key: indexes.worker_statefulsets(key)},
            {key: workers},
            {key: indexes.placements(key)},
            {key: routers},
        )


def write_fleet_status(
    model: BaseModelSpec,
    settings: OperatorSettings,
    ref: BaseModelRef,
    body: kopf.Body,
    patch: kopf.Patch,
    indexes: FleetIndexes,
    refused: str | None = None,
) -> None:
    """Fill `patch` with the BaseModel's status as the indexes show the fleet, if anything changed; a
    fleet that has just got stuck also gets a Warning Event (what `kubectl describe` and alerting on
    Events show).

    `refused`: the API server's answer to the last apply of the fleet, when it refused an object.
    """
    key = (ref.namespace, ref.name)
    sets = list(indexes.worker_sets.get(key, []))
    observation = fleet_observation(
        sets[0] if sets else None,
        list(indexes.worker_pods.get(key, [])),
        list(indexes.worker_placements.get(key, [])),
        list(indexes.router_pods.get(key, [])),
    )
    if refused is not None:
        observation = replace(observation, refused=refused)
    # What this generation's worker StatefulSet looks like at the worker count the index shows (a scale
    # the placement loop decided is not a roll), to tell a StatefulSet the watch has not caught up with.
    planned_hash = content_hash(worker_statefulset(ref, model, settings, observation.replicas))
    current = dict(body.get("status") or {})
    generation = int(body.get("metadata", {}).get("generation", 0))
    planned = plan_base_model_status(
        model, generation, observation, current, _now(), worker_selector(ref.name), planned_hash
    )
    metrics.track_base_model(*key)
    metrics.WORKERS.labels(*key, "desired").set(planned["desiredWorkers"])
    metrics.WORKERS.labels(*key, "ready").set(planned["readyWorkers"])
    if status_changed(current, planned):
        patch.status.update(planned)
        if (stalled := newly_stalled(current, planned)) is not None:
            kopf.warn(body, reason=stalled[0], message=stalled[1])
        metrics.API_WRITES.labels("BaseModel", "patch-status").inc()  # kopf sends it after the handler


def _now() -> datetime:
    return datetime.now(UTC)
