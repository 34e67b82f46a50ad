"""Reads each running trainer's progress from its container log, for the training pass to write.

Trainer pods hold no Kubernetes token: the trainer prints its progress as JSON
lines on stdout and the operator, the one writer of TrainingJob status, reads
the last `TAIL_LINES` lines of the trainer container's log (`pods/log: get`)
at most once per `min_interval` seconds per pod, and keeps the last progress
it parsed (training_progress) per pod. A log that cannot be read (a pod whose
container has not started, a node with no kubelet to ask, as on KWOK) leaves
that last progress as it was, and is tried again only after a longer wait, so
such pods never slow the pass down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.operator.training_progress import parse_progress, parse_tenants
from loraplex.operator.training_workload import TRAINER_CONTAINER

log = logging.getLogger(__name__)

TAIL_LINES = 200  # the trainer prints a few lines per progress report; stderr may add some
REQUEST_TIMEOUT_SECONDS = 3.0
RETRY_AFTER_FAILURE_SECONDS = 30.0

LogReader = Callable[[str, str], str]  # namespace, pod -> the tail of its trainer container's log


def kubernetes_reader(core: client.CoreV1Api) -> LogReader:
    def read(namespace: str, pod: str) -> str:
        text: Any = core.read_namespaced_pod_log(
            pod,
            namespace,
            container=TRAINER_CONTAINER,
            tail_lines=TAIL_LINES,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
        return str(text)

    return read


@dataclass
class _Seen:
    next_read: float
    progress: dict[str, dict[str, Any]]  # adapter -> progress
    tenants: dict[str, dict[str, Any]] | None = None  # a warm trainer's last `tenants` report


class ProgressReader:
    """The last progress each trainer pod's log showed, read at most once per `min_interval` per pod."""

    def __init__(self, read: LogReader, min_interval: float) -> None:
        self.read = read
        self.min_interval = min_interval
        self._seen: dict[tuple[str, str], _Seen] = {}

    def progress(self, namespace: str, pod: str, adapter: str, now: float) -> dict[str, Any] | None:
        """The last progress of `adapter` that pod `pod`'s log showed (None: none yet); `now`: monotonic."""
        return self._refresh(namespace, pod, now).progress.get(adapter)

    def tenant(self, namespace: str, pod: str, adapter: str, now: float) -> dict[str, Any] | None:
        """`adapter`'s state in the last `tenants` report of warm trainer pod `pod` (None: not in it)."""
        return (self._refresh(namespace, pod, now).tenants or {}).get(adapter)

    def _refresh(self, namespace: str, pod: str, now: float) -> _Seen:
        key = (namespace, pod)
        seen = self._seen.get(key)
        if seen is None or now >= seen.next_read:
            last = seen if seen is not None else _Seen(0.0, {})
            try:
                text = self.read(namespace, pod)
            except Exception as error:  # no log yet, or none to be had: keep the last progress
                forbidden = isinstance(error, ApiException) and error.status == 403
                log.log(
                    logging.WARNING if forbidden else logging.DEBUG,  # RBAC without `pods/log: get`
                    "Could not read the log of trainer pod %s/%s: %s", namespace, pod, error,
                )  # fmt: skip
                seen = _Seen(
                    now + max(self.min_interval, RETRY_AFTER_FAILURE_SECONDS), last.progress, last.tenants
                )
            else:
                tenants = parse_tenants(text)
                seen = _Seen(
                    now + self.min_interval,
                    {**last.progress, **parse_progress(text)},
                    tenants if tenants is not None else last.tenants,
                )
            self._seen[key] = seen
        return seen

    def forget_all_but(self, pods: Iterable[tuple[str, str]]) -> None:
        """Drop what was kept of pods other than `pods` (namespace, name): the ones still running."""
        keep = set(pods)
        for key in [k for k in self._seen if k not in keep]:
            del self._seen[key]
