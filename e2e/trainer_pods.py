"""Ends a simulated trainer pod the way a real trainer process ends it, for tests on KWOK nodes.

KWOK runs no containers: a trainer pod stays Running (see kwok_stages.yaml)
until something sets its final status. These helpers set it as the kubelet
would after `loraplex trainer` exits: the container's exit code and its
termination message (the trainer's `resultPath` summary).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from loraplex.api.labels import TRAINING_JOB_LABEL
from loraplex.operator.training_workload import TRAINER_CONTAINER


def trainer_pods(api: client.ApiClient, namespace: str, training_job: str) -> list[Any]:
    """The trainer pods of one TrainingJob, oldest first."""
    pods = (
        client.CoreV1Api(api)
        .list_namespaced_pod(namespace, label_selector=f"{TRAINING_JOB_LABEL}={training_job}")
        .items
    )
    return sorted(pods, key=lambda p: p.metadata.creation_timestamp)


def summary(exit_code: int, adapter: str, **entry: Any) -> str:
    """The trainer's result summary as it writes it to /dev/termination-log."""
    return json.dumps({"exitCode": exit_code, "adapters": [{"name": adapter, **entry}]})


def end_trainer_pod(api: client.ApiClient, namespace: str, pod: str, exit_code: int, message: str) -> None:
    """Set a trainer pod's final status: Succeeded on exit 0, else Failed, with the termination message."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "message": message,
        "startedAt": now,
        "finishedAt": now,
    }
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [
            {
                "name": TRAINER_CONTAINER,
                "image": "loraplex",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"terminated": terminated},
            }
        ],
    }
    client.CoreV1Api(api).patch_namespaced_pod_status(pod, namespace, {"status": status})
