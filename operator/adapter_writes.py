"""The one writer of a LoRAAdapter: its status, and the removal of its unload finalizer.

The status has three callers, all through here: the adapter's own event handler
(an invalid adapter; kopf sends the patch the handler filled), the BaseModel's
re-check of its adapters (an invalid adapter, a direct write), and the
BaseModel's placement loop (placed adapters, many at once). What a status says
is decided by the pure planners (adapter_status, adapter_residency); this module
only writes it and counts the write.

The `loraplex.dev/unload` finalizer comes off in one function,
`remove_unload_finalizer`: either through kopf's patch (the adapter's own event)
or as a direct patch (the placement loop, a deleted BaseModel). Whether it may
come off (no worker wants or holds the adapter) is placement_pass.releasable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from typing import Any, cast

import kopf
from kubernetes import client
from urllib3 import BaseHTTPResponse

from loraplex.api import GROUP, LORA_ADAPTERS, VERSION
from loraplex.operator import metrics
from loraplex.operator.admission_policy import UNLOAD_FINALIZER
from loraplex.operator.placement_pass import releasable


def fill_status_patch(patch: kopf.Patch, status: Mapping[str, Any]) -> None:
    """Write a status through kopf: the handler's patch, which kopf sends after the handler."""
    patch.status.update(status)
    metrics.API_WRITES.labels("LoRAAdapter", "patch-status").inc()


def write_status(
    custom: client.CustomObjectsApi, namespace: str, name: str, status: Mapping[str, Any]
) -> None:
    """Write one adapter's status now.

    The answer (the whole adapter) is drained unparsed, so its connection goes back to the pool:
    parsing it is a third of the client's CPU per write, and a bulk apply is a write per adapter.
    """
    response = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, LORA_ADAPTERS, name, {"status": status}, _preload_content=False
    )
    cast(BaseHTTPResponse, response).drain_conn()
    metrics.API_WRITES.labels("LoRAAdapter", "patch-status").inc()


def write_statuses(
    custom: client.CustomObjectsApi,
    writers: Executor,
    namespace: str,
    statuses: Iterable[tuple[str, Mapping[str, Any]]],
) -> int:
    """Write (adapter name, status) pairs several at once: after a bulk apply that is every adapter."""
    changed = list(statuses)
    list(writers.map(lambda item: write_status(custom, namespace, *item), changed))
    return len(changed)


def remove_unload_finalizer(
    meta: Mapping[str, Any],
    *,
    patch: kopf.Patch | None = None,
    custom: client.CustomObjectsApi | None = None,
) -> bool:
    """Take the unload finalizer off an adapter: into kopf's `patch`, else with `custom` at once.

    Returns whether a write was made (False: it had none, or it is gone already).
    """
    finalizers = list(meta.get("finalizers") or [])
    if UNLOAD_FINALIZER not in finalizers:
        return False
    kept = [f for f in finalizers if f != UNLOAD_FINALIZER]
    if patch is not None:
        patch.metadata["finalizers"] = kept  # kopf sends the patch after the handler
    else:
        assert custom is not None, "a patch or an API client"
        try:
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                meta["namespace"],
                LORA_ADAPTERS,
                meta["name"],
                {"metadata": {"finalizers": kept}},
            )
        except client.ApiException as error:
            if error.status == 404:
                return False  # already gone: another pass or event let it go first
            raise
    metrics.API_WRITES.labels("LoRAAdapter", "patch").inc()
    return True


def release_unloaded(
    custom: client.CustomObjectsApi, bodies: Iterable[Mapping[str, Any]], placements: list[Mapping[str, Any]]
) -> int:
    """Remove the finalizer of deleted adapters that no worker wants or holds; return the writes."""
    return sum(
        remove_unload_finalizer(body["metadata"], custom=custom)
        for body in bodies
        if releasable(body["metadata"], placements)
    )
