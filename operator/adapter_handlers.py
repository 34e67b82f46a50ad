"""kopf handlers for LoRAAdapter: check each adapter against its BaseModel and report it.

Adapters are re-checked when they change, and when their BaseModel's spec
changes or the BaseModel appears or goes: an index of adapters by BaseModel
keeps that proportional to the adapters of the one BaseModel that changed.
"""

from __future__ import annotations

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
from loraplex.operator.conditions import condition
from loraplex.operator.fleet_status import status_changed
from loraplex.operator.observe import index_essentials

BaseKey = tuple[str, str]


def register(registry: kopf.OperatorRegistry, api: client.ApiClient) -> None:
    """Attach the LoRAAdapter handlers and the indexes they read to `registry`."""
    custom = client.CustomObjectsApi(api)
    seen_generations: dict[BaseKey, int] = {}

    @kopf.index(GROUP, VERSION, "basemodels", id="base_models", registry=registry)
    def base_models(spec: kopf.Spec, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
        return {(str(namespace), name): dict(spec)}

    @kopf.index(GROUP, VERSION, "loraadapters", id="adapters_by_base", registry=registry)
    def adapters_by_base(body: kopf.Body, spec: kopf.Spec, namespace: str | None, **_: Any) -> dict[Any, Any]:
        return {(str(namespace), spec.get("baseModel", "")): index_essentials(body)}

    @kopf.on.resume(GROUP, VERSION, "loraadapters", id="check", registry=registry)
    @kopf.on.create(GROUP, VERSION, "loraadapters", id="check", registry=registry)
    @kopf.on.update(GROUP, VERSION, "loraadapters", field="spec", id="check", registry=registry)
    def check(
        body: kopf.Body,
        spec: kopf.Spec,
        namespace: str | None,
        meta: kopf.Meta,
        status: kopf.Status,
        patch: kopf.Patch,
        **kwargs: Any,
    ) -> None:
        base = _base_model(kwargs["base_models"], (str(namespace), spec.get("baseModel", "")))
        verdict, planned = _judge(str(namespace), spec, base, int(meta.get("generation", 0)), dict(status))
        metrics.RECONCILES.labels("LoRAAdapter", "ok" if verdict.placeable else "invalid").inc()
        if planned is not None:
            patch.status.update(planned)
        _warn_when_newly_invalid(body, dict(status), verdict)

    @kopf.on.delete(GROUP, VERSION, "loraadapters", id="unload", registry=registry)
    def unload_everywhere(spec: kopf.Spec, name: str, namespace: str | None, **kwargs: Any) -> None:
        """Hold the object (finalizer) until no worker wants or holds the adapter any more."""
        key = (str(namespace), spec.get("baseModel", ""))
        holding = workers_holding(kwargs["worker_placements"].get(key, []), name)
        if holding:
            raise kopf.TemporaryError(
                f"Waiting for {len(holding)} worker(s) to unload it: {holding[:5]}", delay=2
            )

    @kopf.on.event(GROUP, VERSION, "basemodels", id="recheck-adapters", registry=registry)
    def recheck_adapters(
        type: str | None, name: str, namespace: str | None, meta: kopf.Meta, **kwargs: Any
    ) -> None:
        key = (str(namespace), name)
        generation = -1 if type == "DELETED" else int(meta.get("generation", 0))
        if seen_generations.get(key) == generation:
            return  # a status write or a resync: nothing adapters care about moved
        seen_generations[key] = generation
        base = None if type == "DELETED" else _base_model(kwargs["base_models"], key)
        for adapter_body in kwargs["adapters_by_base"].get(key, []):
            _recheck(custom, adapter_body, base)


def _recheck(custom: client.CustomObjectsApi, body: Mapping[str, Any], base: BaseModelSpec | None) -> None:
    meta, current = body["metadata"], dict(body.get("status") or {})
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
