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

from loraplex.api import GROUP, VERSION
from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator import metrics
from loraplex.operator.adapter_status import AdapterCheck, check_adapter, plan_adapter_status
from loraplex.operator.admission_policy import UNLOAD_FINALIZER
from loraplex.operator.conditions import condition
from loraplex.operator.fleet_status import status_changed
from loraplex.operator.observe import index_essentials

BaseKey = tuple[str, str]


def register(registry: kopf.OperatorRegistry, api: client.ApiClient) -> None:
    """Attach the LoRAAdapter handlers and the indexes they read to `registry`."""
    custom = client.CustomObjectsApi(api)
    seen_generations: dict[BaseKey, int] = {}
    judged: dict[str, tuple[int, str]] = {}  # adapter uid -> (generation, BaseModel fingerprint) judged

    @kopf.index(GROUP, VERSION, "basemodels", id="base_models", registry=registry)
    async def base_models(spec: kopf.Spec, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
        return {(str(namespace), name): dict(spec)}

    @kopf.index(GROUP, VERSION, "loraadapters", id="adapters_by_base", registry=registry)
    async def adapters_by_base(
        body: kopf.Body, spec: kopf.Spec, namespace: str | None, **_: Any
    ) -> dict[Any, Any]:
        return {(str(namespace), spec.get("baseModel", "")): index_essentials(body)}

    @kopf.on.event(GROUP, VERSION, "loraadapters", id="check", registry=registry)
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
        finalizers = list(meta.get("finalizers", []))
        if meta.get("deletionTimestamp"):
            base_gone = not kwargs["base_models"].get(key)  # its workers go with it: nothing to unload from
            if base_gone or not workers_holding(list(kwargs["worker_placements"].get(key, [])), name):
                release(patch, finalizers)
            return
        if UNLOAD_FINALIZER not in finalizers:  # no admission policy set it at creation
            patch.metadata["finalizers"] = [*finalizers, UNLOAD_FINALIZER]
            metrics.API_WRITES.labels("LoRAAdapter", "patch").inc()  # kopf sends the patch after the handler
        # Judge once per (adapter generation, BaseModel spec seen): a status write or a resync is not
        # judged again, but an event after the BaseModel appeared or changed is, even when that change's
        # recheck raced with this handler and lost.
        judging = (generation, _fingerprint(kwargs["base_models"].get(key, [])))
        if judged.get(uid) == judging:
            return
        judged[uid] = judging
        with metrics.reconciling("LoRAAdapter") as outcome:
            base = _base_model(kwargs["base_models"], key)
            verdict, planned = _judge(str(namespace), spec, base, generation, dict(status))
            if not verdict.placeable:
                outcome.result = "invalid"
            if planned is not None:
                patch.status.update(planned)
                metrics.API_WRITES.labels("LoRAAdapter", "patch-status").inc()
            _warn_when_newly_invalid(body, dict(status), verdict)

    @kopf.on.event(GROUP, VERSION, "basemodels", id="recheck-adapters", registry=registry)
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
        base = None if type == "DELETED" else _base_model(kwargs["base_models"], key)
        bodies = list(kwargs["adapters_by_base"].get(key, []))  # a snapshot: the writes below change it
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


def release(patch: kopf.Patch, finalizers: list[str]) -> None:
    """Let a deleted adapter go: no worker wants or holds it any more."""
    if UNLOAD_FINALIZER in finalizers:
        patch.metadata["finalizers"] = [f for f in finalizers if f != UNLOAD_FINALIZER]
        metrics.API_WRITES.labels("LoRAAdapter", "patch").inc()  # kopf sends the patch after the handler


def release_unloaded(
    custom: client.CustomObjectsApi, bodies: Iterable[Mapping[str, Any]], placements: list[Mapping[str, Any]]
) -> int:
    """Remove the finalizer of deleted adapters that no worker wants or holds; return the writes."""
    writes = 0
    for body in bodies:
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers", []))
        if not meta.get("deletionTimestamp") or UNLOAD_FINALIZER not in finalizers:
            continue
        if workers_holding(placements, meta["name"]):
            continue
        try:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], "loraadapters", meta["name"],
                {"metadata": {"finalizers": [f for f in finalizers if f != UNLOAD_FINALIZER]}},
            )  # fmt: skip
        except client.ApiException as error:
            if error.status == 404:
                continue  # already gone: another pass or event let it go first
            raise
        metrics.API_WRITES.labels("LoRAAdapter", "patch").inc()
        writes += 1
    return writes


def _recheck(custom: client.CustomObjectsApi, body: Mapping[str, Any], base: BaseModelSpec | None) -> None:
    meta, current = body["metadata"], dict(body.get("status") or {})
    if meta.get("deletionTimestamp"):
        return  # the placement loop, the adapter's own events or its BaseModel's deletion let it go
    verdict, planned = _judge(meta["namespace"], body["spec"], base, int(meta.get("generation", 0)), current)
    if planned is not None:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], "loraadapters", meta["name"], {"status": planned}
        )
        metrics.API_WRITES.labels("LoRAAdapter", "patch-status").inc()
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


def workers_holding(placements: Iterable[Mapping[str, Any]], adapter: str) -> list[str]:
    """Workers whose WorkerPlacement still wants (spec) or holds (status) the adapter."""
    holding = []
    for body in placements:
        wanted = {a["name"] for a in body.get("spec", {}).get("adapters", [])}
        held = {a["name"] for a in (body.get("status") or {}).get("adapters", [])}
        if adapter in wanted | held:
            holding.append(body["spec"]["worker"])
    return sorted(holding)


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


def _base_model(index: kopf.Index[BaseKey, dict[str, Any]], key: BaseKey) -> BaseModelSpec | None:
    for spec in index.get(key, []):
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
