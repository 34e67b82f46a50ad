"""Cluster mode: the residency table and the worker pods, watched with the official Kubernetes client.

Three watches in the router's namespace, two on the label
`loraplex.dev/base-model=<base>`: WorkerPlacements (`status.adapters` is what
each worker's agent holds, per tier; `spec.adapters` names the head adapters)
and the worker pods of the `<base>-worker` StatefulSet (their IP gives the vLLM
and agent endpoints, their Ready condition whether they serve); and the
LoRAAdapters, kept for this base model (`spec.baseModel`; they carry no such
label): which names are LoRAAdapters, placed or not (`replicas: 0` ones load
on first use), the digest each asks for, and who may use it (`spec.access`). Each watch runs in a thread (the
client is synchronous), lists first, then watches from the list's
resourceVersion, and lists again when the watch expires (410 Gone). Every event
is handed to the event loop, which alone touches the state.

RBAC: get, list and watch on `workerplacements.loraplex.dev`,
`loraadapters.loraplex.dev` and pods.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from loraplex.api import GROUP, LORA_ADAPTERS, VERSION, WORKER_PLACEMENTS
from loraplex.api.access import AccessList
from loraplex.api.adapter import live_source
from loraplex.api.labels import BASE_MODEL_LABEL, COMPONENT_LABEL, WORKER
from loraplex.api.workerplacement import read_status
from loraplex.router.state import FleetState, residents

log = logging.getLogger(__name__)


def apply_placement(state: FleetState, event: str, obj: Mapping[str, Any], base_model: str) -> None:
    """One WorkerPlacement event into the state (pure but for the state it updates)."""
    spec = obj.get("spec") or {}
    if spec.get("baseModel", base_model) != base_model:
        return
    worker = spec.get("worker") or (obj.get("metadata") or {}).get("name")
    if not worker:
        return
    if event == "DELETED":
        state.forget_residency(worker)
        return
    status = read_status(obj.get("status"))
    entries = [a for a in spec.get("adapters") or [] if isinstance(a, Mapping) and "name" in a]
    named = [a["name"] for a in entries]
    revisions = {a["name"]: a["sha256"] for a in entries if isinstance(a.get("sha256"), str)}
    state.report_residency(
        worker, residents(status), status.gpu_slots, status.cpu_slots, named=named, revisions=revisions
    )


def apply_adapter(state: FleetState, event: str, obj: Mapping[str, Any], base_model: str) -> None:
    """One LoRAAdapter event into the state: a named adapter of this base model, and its digest. One
    being deleted is named no longer (only while a placement still lists it): no new copies of it."""
    name = (obj.get("metadata") or {}).get("name")
    if not name:
        return
    source = live_source(obj, base_model) if event != "DELETED" else None
    state.table.set_adapter_object(name, None if source is None else source.sha256)
    spec = obj.get("spec") or {}
    if event != "DELETED" and spec.get("baseModel") == base_model:
        # A deleted one keeps its last rule: a placement may still list it, and it stays private.
        state.set_access_rule(name, read_access(spec.get("access")))


def read_access(value: Any) -> AccessList | None:
    """A LoRAAdapter's `spec.access`; one the router cannot read admits no one (fail closed)."""
    if value is None:
        return None
    try:
        return AccessList.model_validate(value)
    except ValidationError:
        log.warning("Refused every caller for an adapter whose spec.access is unreadable: %r", value)
        return AccessList.model_construct(subjects=[], groups=[])


def apply_pod(
    state: FleetState, event: str, pod: Mapping[str, Any], vllm_port: int, agent_port: int, now: float
) -> None:
    """One worker pod event into the state: its endpoints and readiness, or its removal."""
    metadata = pod.get("metadata") or {}
    name = metadata.get("name")
    if not name:
        return
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if event == "DELETED" or metadata.get("deletionTimestamp") or not ip:
        if name in state.endpoints:
            log.info(
                "Removed worker %s from routing (pod %s)", name, "deleted" if event == "DELETED" else "gone"
            )
        state.remove_worker(name)
        return
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    state.upsert_worker(name, f"http://{ip}:{vllm_port}", f"http://{ip}:{agent_port}", ready, now)


class KubeSource:
    """Runs both watches; `run()` returns when `stop()` is called."""

    def __init__(
        self,
        state: FleetState,
        namespace: str,
        base_model: str,
        vllm_port: int = 8000,
        agent_port: int = 8080,
        api_client: Any = None,
        kubeconfig: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.namespace = namespace
        self.base_model = base_model
        self.vllm_port = vllm_port
        self.agent_port = agent_port
        self.api_client = api_client
        self.kubeconfig = kubeconfig
        self.clock = clock
        self._stop = threading.Event()
        self._listed: set[str] = set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        from kubernetes import client

        from loraplex.kube import api_client

        if self.api_client is None:
            self.api_client = api_client(self.kubeconfig)
        loop = asyncio.get_running_loop()
        custom = client.CustomObjectsApi(self.api_client)
        core = client.CoreV1Api(self.api_client)
        selector = f"{BASE_MODEL_LABEL}={self.base_model}"

        def placements(kind: str, obj: Any) -> None:
            apply_placement(self.state, kind, obj, self.base_model)

        def adapters(kind: str, obj: Any) -> None:
            apply_adapter(self.state, kind, obj, self.base_model)

        def list_adapters(**kw: Any) -> Any:
            return custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, LORA_ADAPTERS, **kw)

        def pods(kind: str, obj: Any) -> None:
            apply_pod(self.state, kind, obj, self.vllm_port, self.agent_port, self.clock())

        def list_placements(**kw: Any) -> Any:
            return custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, WORKER_PLACEMENTS, **kw
            )

        def list_pods(**kw: Any) -> Any:
            return core.list_namespaced_pod(self.namespace, **kw)

        await asyncio.gather(
            asyncio.to_thread(self._watch, "placements", list_placements, selector, placements, loop),
            asyncio.to_thread(
                self._watch, "pods", list_pods, f"{selector},{COMPONENT_LABEL}={WORKER}", pods, loop
            ),
            asyncio.to_thread(self._watch, "adapters", list_adapters, None, adapters, loop),
        )

    def _watch(
        self,
        what: str,
        list_fn: Callable[..., Any],
        selector: str | None,
        handle: Callable[[str, Any], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        from loraplex.kube import list_and_watch

        list_and_watch(
            what,
            list_fn,
            lambda items: loop.call_soon_threadsafe(self._relisted, what, items, handle),
            lambda kind, obj: loop.call_soon_threadsafe(handle, kind, obj),
            self._stop,
            self.api_client.sanitize_for_serialization,
            **({"label_selector": selector} if selector else {}),
        )

    def _relisted(self, what: str, items: list[Any], handle: Callable[[str, Any], None]) -> None:
        present = {(i.get("metadata") or {}).get("name") for i in items}
        if what == "pods":
            for name in [n for n in self.state.endpoints if n not in present]:
                self.state.remove_worker(name)
        if what == "adapters":  # deleted while the watch was down
            for name in [n for n in self.state.table.adapter_objects() if n not in present]:
                self.state.table.set_adapter_object(name, None)
        for item in items:
            handle("ADDED", item)
        self._listed.add(what)
        # Adapters too: until their access lists are known, a named adapter would look open to all.
        if self._listed >= {"pods", "placements", "adapters"}:
            self.state.synced = True
