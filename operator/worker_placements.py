"""Turns a placement target into the WorkerPlacement objects the agents converge to.

Pure: the target says, per adapter, which workers hold it in which tier; this
groups it per worker and renders one WorkerPlacement per worker (sorted, with a
content hash), so the applier writes only the workers whose set changed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from loraplex.api import API_VERSION
from loraplex.api.adapter import LoRAAdapterSpec, Tier
from loraplex.operator.fleet import BaseModelRef, Manifest, labels, owned_by

# adapter name -> worker name -> tier
Target = Mapping[str, Mapping[str, Tier]]


def worker_placement_name(worker: str) -> str:
    """One WorkerPlacement per worker pod, named after it."""
    return worker


def plan_worker_placements(
    ref: BaseModelRef, workers: list[str], target: Target, adapters: Mapping[str, LoRAAdapterSpec]
) -> list[Manifest]:
    """One WorkerPlacement per worker (empty for a worker that holds nothing)."""
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
    return [_worker_placement(ref, worker, wanted.get(worker, [])) for worker in sorted(workers)]


def _worker_placement(ref: BaseModelRef, worker: str, adapters: list[dict[str, object]]) -> Manifest:
    return owned_by(
        ref,
        {
            "apiVersion": API_VERSION,
            "kind": "WorkerPlacement",
            "metadata": {
                "name": worker_placement_name(worker),
                "namespace": ref.namespace,
                "labels": labels(ref, "worker"),
            },
            "spec": {"baseModel": ref.name, "worker": worker, "adapters": adapters},
        },
    )
