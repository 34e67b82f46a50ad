"""The PriorityClass trainer pods run at, as the chart creates it, for clusters the chart is not in."""

from __future__ import annotations

from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.api.labels import PART_OF

TRAINER_PRIORITY_CLASS = "loraplex-trainer"
TRAINER_PRIORITY = -100  # the chart's default (training.priorityClass.value)


def ensure_trainer_priority_class(api: client.ApiClient) -> None:
    """Create `loraplex-trainer` unless it exists (its value is immutable: it is never changed)."""
    body: dict[str, Any] = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": TRAINER_PRIORITY_CLASS, "labels": dict(PART_OF)},
        "value": TRAINER_PRIORITY,
        "globalDefault": False,
        "preemptionPolicy": "Never",
        "description": "loraplex trainer pods: preemptible LoRA training in the GPUs serving leaves free.",
    }
    try:
        client.SchedulingV1Api(api).create_priority_class(cast(Any, body))
    except ApiException as error:
        if error.status != 409:
            raise
