"""A progress sink that reports each adapter's progress on its TrainingJob's status.

In a trainer pod the operator starts, each adapter is named after its
TrainingJob and the pod's environment names the namespace (`POD_NAMESPACE`)
and the job (`LORAPLEX_TRAININGJOB`). This sink patches
`status.progress` (step, totalSteps, loss, tokensPerSecond: the trainer's
event fields as they are) of the TrainingJob an event's adapter names, at most
once per `min_interval` seconds per adapter, plus every `started` and last-step
event. The patch goes through the pod's ServiceAccount (`<basemodel>-trainer`,
bound to the chart's `loraplex-trainer` ClusterRole: get/patch on
`trainingjobs/status`). A failed patch is logged to stderr and training goes
on: progress is a report, never a reason to stop.

The operator still decides the phase and reads results from the pod's
termination message; this sink writes nothing but `status.progress`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from loraplex.api import GROUP, TRAINING_JOBS, VERSION
from loraplex.worker.trainer.progress import Event, Fanout, ProgressSink

Patcher = Callable[[str, str, dict[str, Any]], None]  # namespace, name, status patch


class TrainingJobStatusSink:
    """Patches `status.progress` of the TrainingJob each adapter is named after."""

    def __init__(
        self,
        namespace: str,
        patch: Patcher,
        min_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.patch = patch
        self.min_interval = min_interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if event.adapter is None or event.event not in ("started", "progress"):
            return
        final = event.total_steps is not None and event.step == event.total_steps
        with self._lock:
            now = self.clock()
            last = self._last.get(event.adapter)
            if (
                event.event == "progress"
                and not final
                and last is not None
                and now - last < self.min_interval
            ):
                return
            self._last[event.adapter] = now
        progress = {
            "step": event.step or 0,
            "totalSteps": event.total_steps,
            "loss": event.loss,
            "tokensPerSecond": event.tokens_per_second,
        }
        try:
            self.patch(
                self.namespace,
                event.adapter,
                {"progress": {k: v for k, v in progress.items() if v is not None}},
            )
        except Exception as error:  # a lost progress report must not stop training
            print(f"Could not report progress of {event.adapter}: {error}", file=sys.stderr, flush=True)


def kubernetes_patcher(kubeconfig: str | None = None) -> Patcher:
    """Patches TrainingJob status with the pod's ServiceAccount (or a kubeconfig outside a pod)."""
    from kubernetes import client

    from loraplex.kube import api_client

    custom = client.CustomObjectsApi(api_client(kubeconfig))

    def patch(namespace: str, name: str, status: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, TRAINING_JOBS, name, {"status": status}
        )

    return patch


def with_status(sink: ProgressSink, environ: Mapping[str, str] = os.environ) -> ProgressSink:
    """`sink` plus a TrainingJobStatusSink when the environment names a TrainingJob (operator-made pods)."""
    namespace = environ.get("POD_NAMESPACE")
    if not namespace or not environ.get("LORAPLEX_TRAININGJOB"):
        return sink
    try:
        patcher = kubernetes_patcher()
    except Exception as error:  # no API access: train anyway, report on stdout only
        print(f"Could not reach the Kubernetes API; progress goes to stdout only: {error}", file=sys.stderr)
        return sink
    return Fanout(sink, TrainingJobStatusSink(namespace, patcher))
