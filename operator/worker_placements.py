"""Turns a placement target into the WorkerPlacement objects the agents converge to.

Pure: the target says, per adapter, which workers hold it in which tier; this
groups it per worker and renders one WorkerPlacement per worker (sorted, with a
content hash), so the applier writes only the workers whose set changed. A
worker whose agent holds a LoRAAdapter being deleted on demand (the router put
it there past its placement) gets it in `spec.unload` until the agent drops it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from loraplex.api import API_VERSION
from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.api.labels import WORKER
from loraplex.api.tiers import Tier
from loraplex.api.workerplacement import read_status
from loraplex.operator.fleet import BaseModelRef, Manifest, labels, owned_by

# adapter name -> worker name -> tier
Target = Mapping[str, Mapping[str, Tier]]


def worker_placement_name(worker: str) -> str:
    """One WorkerPlacement per worker pod, named after it."""
    return worker


def on_demand_unloads(
    deleting: AbstractSet[str], placements: Iterable[Mapping[str, Any]]
) -> dict[str, list[str]]:
    """worker -> the adapters being deleted that its agent reports holding on demand.

    No WorkerPlacement lists such a copy (the router spilled the adapter there past its placement, or
    loaded it on first use), so only `spec.unload` makes the agent drop it before it ages out; the
    adapter's unload finalizer waits for it.
    """
    unloads: dict[str, list[str]] = {}
    if not deleting:
        return unloads
    for body in placements:
        held = read_status(body.get("status")).adapters
        names = sorted({a.name for a in held if a.on_demand and a.name in deleting})
        if names:
            unloads[body["spec"]["worker"]] = names
    return unloads


def plan_worker_placements(
    ref: BaseModelRef,
    workers: list[str],
    target: Target,
    adapters: Mapping[str, LoRAAdapterSpec],
    unloads: Mapping[str, list[str]] | None = None,
    report_requests: bool = False,
) -> list[Manifest]:
    """One WorkerPlacement per worker (empty for a worker that holds nothing); `report_requests`
    asks the agents for their request load (the BaseModel scales on it)."""
    wanted: dict[str, list[dict[str, object]]] = defaultdict(list)
    for name in sorted(target):
        spec = adapters.get(name)
        if spec is None:
            continue  # deleted since the plan was made
        for worker, tier in target[name].items():
            wanted[worker].append(
                {
                    "name": name,
                    "uri": spec.source.uri,
                    "sha256": spec.source.sha256,
                    "rank": spec.rank,
                    "tier": tier,
                    "pinned": spec.policy == "Pinned",
                }
            )
    unloads = unloads or {}
    return [
        _worker_placement(ref, worker, wanted.get(worker, []), unloads.get(worker, []), report_requests)
        for worker in sorted(workers)
    ]


def _worker_placement(
    ref: BaseModelRef,
    worker: str,
    adapters: list[dict[str, object]],
    unload: list[str],
    report_requests: bool,
) -> Manifest:
    spec: dict[str, object] = {"baseModel": ref.name, "worker": worker, "adapters": adapters}
    if unload:  # left out when empty: the content hash of every other WorkerPlacement stays as it was
        spec["unload"] = unload
    if report_requests:  # likewise
        spec["reportRequests"] = True
    return owned_by(
        ref,
        {
            "apiVersion": API_VERSION,
            "kind": "WorkerPlacement",
            "metadata": {
                "name": worker_placement_name(worker),
                "namespace": ref.namespace,
                "labels": labels(ref, WORKER),
            },
            "spec": spec,
        },
    )


def workers_holding(placements: Iterable[Mapping[str, Any]], adapter: str) -> list[str]:
    """Workers whose WorkerPlacement still wants (spec) or holds (status) the adapter.

    A deleted adapter's unload finalizer stays until this is empty.
    """
    holding = []
    for body in placements:
        wanted = {a["name"] for a in body.get("spec", {}).get("adapters", [])}
        held = {a.name for a in read_status(body.get("status")).adapters}
        if adapter in wanted | held:
            holding.append(body["spec"]["worker"])
    return sorted(holding)
