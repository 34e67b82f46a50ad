"""kopf handlers for LoRAAdapter: check each adapter against its BaseModel and report it.

Deleting an adapter unloads it everywhere first: the `loraplex.dev/unload`
finalizer (set at creation by the admission policy of operator/admission_policy.py
where the cluster serves one, else added here) stays until no WorkerPlacement
wants or holds it; the BaseModel's placement loop (which notices the unloads)
or the adapter's own events remove it. When the BaseModel itself goes, its
workers go with it and its placement loop stops, so its deleted adapters are
let go then (`kubectl delete -f` of a BaseModel and its adapters together).

Adapters are re-checked when they change, and when their BaseModel's spec
changes or the BaseModel appears or goes: an index of adapters by BaseModel
keeps that proportional to the adapters of the one BaseModel that changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client
from pydantic import ValidationError

from loraplex.api import BASE_MODELS, GROUP, LORA_ADAPTERS, VERSION
from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.conditions import condition
from loraplex.operator import metrics
from loraplex.operator.adapter_status import AdapterCheck, check_adapter, plan_adapter_status
from loraplex.operator.adapter_writes import (
    fill_status_patch,
    release_unloaded,
    remove_unload_finalizer,
    write_status,
)
from loraplex.operator.admission_policy import UNLOAD_FINALIZER
from loraplex.operator.fleet_status import status_changed
from loraplex.operator.indexes import Indexes
from loraplex.operator.worker_placements import workers_holding

BaseKey = tuple[str, str]


def register(registry: kopf.OperatorRegistry, api: client.ApiClient) -> None:
    """Attach the LoRAAdapter handlers to `registry` (they read the indexes of operator/indexes.py)."""
    custom = client.CustomObjectsApi(api)
    seen_generations: dict[BaseKey, int] = {}
    judged: dict[str, tuple[int, str]] = {}  # adapter uid -> (generation, BaseModel fingerprint) judged

    @kopf.on.event(GROUP, VERSION, LORA_ADAPTERS, id="check", registry=registry)
    async def check(
        type: str | None,
        body: kopf.Body,
        spec: kopf.Spec,
        name: str,
        namespace: str | None,
        meta: kopf.Meta,
        status: kopf.Status,
        patch: kopf.Patch,
        **kwargs: Any,
    ) -> None:
        """Judge the adapter on every event (level-based; it writes only what changed).

        An event handler, not a create/update one: kopf then keeps no last-handled annotation
        on each adapter, which at 10,000 adapters is 10,000 writes saved. Async, because it only
        reads indexes and fills kopf's patch: most events return at once, and a thread hop per
        event (tens of thousands during a bulk apply) costs more than the work.
        """
        uid, generation = str(meta.get("uid")), int(meta.get("generation", 0))
        if type == "DELETED":
            judged.pop(uid, None)
            return
        key = (str(namespace), spec.get("baseModel", ""))
        indexes = Indexes.from_kwargs(kwargs)
        finalizers = list(meta.get("finalizers", []))
        if meta.get("deletionTimestamp"):
            base_gone = not indexes.base_model_entries(key)  # its workers go with it: nothing to unload from
            if base_gone or not workers_holding(indexes.placements(key), name):
                remove_unload_finalizer(meta, patch=patch)
            return
        if UNLOAD_FINALIZER not in finalizers:  # no admission policy set it at creation
            patch.metadata["finalizers"] = [*finalizers, UNLOAD_FINALIZER]
            metrics.API_WRITES.labels("LoRAAdapter", "patch").inc()  # kopf sends the patch after the handler
        # Judge once per (adapter generation, BaseModel spec seen): a status write or a resync is not
        # judged again, but an event after the BaseModel appeared or changed is, even when that change's
        # recheck raced with this handler and lost.
        judging = (generation, _fingerprint(indexes.base_model_specs(key)))
        if judged.get(uid) == judging:
            return
        judged[uid] = judging
        with metrics.reconciling("LoRAAdapter") as outcome:
            base = _base_model(indexes.base_model_specs(key))
            verdict, planned = _judge(str(namespace), spec, base, generation, dict(status))
            if not verdict.placeable:
                outcome.result = "invalid"
            if planned is not None:
                fill_status_patch(patch, planned)
            _warn_when_newly_invalid(body, dict(status), verdict)

    @kopf.on.event(GROUP, VERSION, BASE_MODELS, id="recheck-adapters", registry=registry)
    def recheck_adapters(
        type: str | None,
        name: str,
        namespace: str | None,
        meta: kopf.Meta,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        key = (str(namespace), name)
        generation = -1 if type == "DELETED" else int(meta.get("generation", 0))
        if seen_generations.get(key) == generation:
            return  # a status write or a resync: nothing adapters care about moved
        seen_generations[key] = generation
        indexes = Indexes.from_kwargs(kwargs)
        base = None if type == "DELETED" else _base_model(indexes.base_model_specs(key))
        bodies = indexes.adapters(key)  # a snapshot: the writes below change it
        if type == "DELETED":
            # Its placement loop stopped and its workers and WorkerPlacements are being garbage-collected:
            # no adapter event would follow, so its deleted adapters are let go now.
            released = release_unloaded(custom, bodies, placements=[])
            if released:
                logger.info(
                    f"Released {released} deleted adapter(s) of the deleted BaseModel {namespace}/{name}"
                )
        for adapter_body in bodies:
            _recheck(custom, adapter_body, base)


def _recheck(custom: client.CustomObjectsApi, body: Mapping[str, Any], base: BaseModelSpec | None) -> None:
    meta, current = body["metadata"], dict(body.get("status") or {})
    if meta.get("deletionTimestamp"):
        return  # the placement loop, the adapter's own events or its BaseModel's deletion let it go
    verdict, planned = _judge(meta["namespace"], body["spec"], base, int(meta.get("generation", 0)), current)
    if planned is not None:
        write_status(custom, meta["namespace"], meta["name"], planned)
    _warn_when_newly_invalid(body, current, verdict)


def _judge(
    namespace: str,
    spec: Mapping[str, Any],
    base: BaseModelSpec | None,
    generation: int,
    current: dict[str, Any],
) -> tuple[AdapterCheck, dict[str, Any] | None]:
    """The verdict on an adapter, and the status to write (None: nothing to write here).

    A valid adapter's status is its BaseModel's placement loop's to write, within a pass:
    writing `WaitingForPlacement` first would cost one more write per adapter.
    """
    adapter = _parse(spec)
    verdict = check_adapter(namespace, adapter, base)
    if verdict.placeable:
        return verdict, None
    planned = plan_adapter_status(verdict, adapter, generation, current, _now())
    return verdict, planned if status_changed(current, planned) else None


def _warn_when_newly_invalid(
    body: Mapping[str, Any], previous: Mapping[str, Any], verdict: AdapterCheck
) -> None:
    """One Warning Event when an adapter turns invalid (not one per pass)."""
    before = condition(previous.get("conditions", []), "Ready") or {}
    if not verdict.placeable and before.get("reason") != verdict.ready.reason:
        kopf.warn(
            kopf.Body(cast(kopf.RawBody, dict(body))),
            reason=verdict.ready.reason,
            message=verdict.ready.message,
        )


def _fingerprint(specs: Iterable[Mapping[str, Any]]) -> str:
    """The BaseModel spec(s) an adapter was judged against, as one comparable string."""
    return json.dumps(list(specs), sort_keys=True, default=str)


def _base_model(specs: Iterable[Mapping[str, Any]]) -> BaseModelSpec | None:
    for spec in specs:
        try:
            return BaseModelSpec.model_validate(spec)
        except ValidationError:
            return None
    return None


def _parse(spec: Mapping[str, Any]) -> LoRAAdapterSpec:
    try:
        return LoRAAdapterSpec.model_validate(dict(spec))
    except ValidationError as error:
        raise kopf.PermanentError(f"Invalid spec: {error}") from error


def _now() -> datetime:
    return datetime.now(UTC)
