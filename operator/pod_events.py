"""Reads why a fleet pod will not start when the kubelet says so only in Events: a volume it cannot
mount or attach (a Secret that does not exist, a claim attached to another node).

Such a pod stays `ContainerCreating` with nothing in its status; the kubelet's Warning Events
(`FailedMount`, `FailedAttachVolume`) hold the cause. For each fleet pod that has been setting up
longer than `settle_seconds` (a mount the kubelet retries once at a pod's start is no trouble) this
lists that pod's Events, by its uid (a StatefulSet's new pod has its predecessor's name), at most
once per `recheck_seconds`, and at most `reads_per_pass` pods per call (a fleet of hundreds whose
claim will not attach costs a few reads a pass, each pod read in turn); the answer goes into the
pod's `volume_trouble`, which the BaseModel's Ready condition reports (`VolumeMountFailed`). The
operator needs `list` on Events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.operator.fleet_status import FleetPod
from loraplex.operator.observe import volume_trouble
from loraplex.operator.training_schedule import parse_time

log = logging.getLogger(__name__)

SETTLE_SECONDS = 30.0
RECHECK_SECONDS = 10.0
READS_PER_PASS = 3


class PodSetupEvents:
    """The kubelet's word on fleet pods stuck setting up, read from Events (see the module's doc)."""

    def __init__(
        self,
        core: client.CoreV1Api,
        *,
        settle_seconds: float = SETTLE_SECONDS,
        recheck_seconds: float = RECHECK_SECONDS,
        reads_per_pass: int = READS_PER_PASS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.settle_seconds = settle_seconds
        self.recheck_seconds = recheck_seconds
        self.reads_per_pass = reads_per_pass
        self.clock = clock
        self._read: dict[str, tuple[float, str | None]] = {}  # pod uid -> (read at, its trouble)
        self._asked: dict[str, float] = {}  # pod uid -> when a caller last asked about it
        self._lock = threading.Lock()  # kopf runs the timers of several BaseModels in its threads

    def with_volume_trouble(self, namespace: str, pods: Iterable[FleetPod]) -> list[FleetPod]:
        """`pods`, each one stuck setting up with the volume trouble its Events show (if any)."""
        now = self.clock()
        kept = 6 * self.recheck_seconds  # forget pods no longer asked about (started or gone)
        with self._lock:
            self._asked = {uid: at for uid, at in self._asked.items() if now - at < kept}
            self._read = {uid: seen for uid, seen in self._read.items() if uid in self._asked}
        fleet = list(pods)
        stuck = [pod for pod in fleet if self._stuck(pod, now)]
        with self._lock:
            self._asked.update((pod.uid, now) for pod in stuck)
            last_read = {pod.uid: self._read.get(pod.uid, (None, None))[0] for pod in stuck}
        due = [pod for pod in stuck if (at := last_read[pod.uid]) is None or now - at >= self.recheck_seconds]
        due.sort(key=lambda pod: last_read[pod.uid] or 0.0)  # never read first, then the longest ago
        for pod in due[: self.reads_per_pass]:
            trouble = self._read_trouble(namespace, pod)
            with self._lock:
                self._read[pod.uid] = (now, trouble)
        with self._lock:
            troubles = {uid: self._read.get(uid, (None, None))[1] for uid in last_read}
        return [replace(p, volume_trouble=troubles[p.uid]) if troubles.get(p.uid) else p for p in fleet]

    def _stuck(self, pod: FleetPod, now: float) -> bool:
        """Whether the pod has been setting up longer than a mount the kubelet retries at once takes."""
        since = parse_time(pod.setting_up_since)
        return since is not None and bool(pod.uid) and now - since.timestamp() >= self.settle_seconds

    def _read_trouble(self, namespace: str, pod: FleetPod) -> str | None:
        selector = f"involvedObject.uid={pod.uid},type=Warning"
        try:
            answer = self.core.list_namespaced_event(namespace, field_selector=selector)
        except ApiException as error:  # the status still says the pod is starting, just not why
            log.warning(f"Cannot read pod {namespace}/{pod.name}'s Events: {error.status} {error.reason}")
            return None
        listed = self.core.api_client.sanitize_for_serialization(answer)
        return volume_trouble(listed.get("items") or [])
