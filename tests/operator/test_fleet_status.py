"""A BaseModel's status as the fleet comes up, gets stuck, rolls and settles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.conditions import ConditionUpdate, condition, merge_conditions
from loraplex.api.workerplacement import read_status
from loraplex.operator.fleet_status import (
    FleetObservation,
    FleetPod,
    newly_stalled,
    plan_base_model_status,
    status_changed,
)
from loraplex.operator.observe import (
    container_trouble,
    fleet_pod,
    init_running_since,
    requests_reported,
    setting_up_since,
    slots_used,
    volume_trouble,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SPEC = BaseModelSpec.model_validate(
    {"model": {"uri": "/m"}, "replicas": {"min": 2}, "engine": {"maxLoras": 4}}
)


def settled(**overrides: Any) -> FleetObservation:
    values: dict[str, Any] = {
        "statefulset_found": True, "replicas": 2, "observed_generation": 1, "generation": 1,
        "ready_replicas": 2, "updated_replicas": 2, "current_revision": "r1", "update_revision": "r1",
        "pods": (FleetPod("w-0", True), FleetPod("w-1", True)), "router_pods": (FleetPod("r-0", True),),
    }  # fmt: skip
    return FleetObservation(**{**values, **overrides})


def ready(status: dict[str, Any]) -> tuple[str, str]:
    found = condition(status["conditions"], "Ready")
    assert found is not None
    return found["status"], found["reason"]


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        (FleetObservation(), ("Unknown", "Creating")),
        (settled(ready_replicas=1), ("False", "WorkersStarting")),
        (settled(update_revision="r2"), ("False", "RollingUpdate")),
        (
            settled(
                pods=(FleetPod("w-0", False, "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),)
            ),
            ("False", "InsufficientGPU"),
        ),
        (
            settled(pods=(FleetPod("w-0", False, "0/4 nodes are available: node(s) had taints"),)),
            ("False", "Unschedulable"),
        ),
        (settled(), ("True", "WorkersReady")),
    ],
)
def test_ready_condition_follows_the_fleet(observation: FleetObservation, expected: tuple[str, str]) -> None:
    assert ready(plan_base_model_status(SPEC, 1, observation, {}, NOW)) == expected


def test_a_worker_restarting_on_a_new_spec_is_a_rolling_update_and_a_new_worker_is_starting() -> None:
    """While a spec change rolls, the worker it restarts is not ready; Ready says the fleet is
    rolling and how far, not that workers are starting. A worker added by a scale-up is starting."""
    rolling = settled(ready_replicas=1, updated_replicas=1, update_revision="r2")
    found = condition(plan_base_model_status(SPEC, 1, rolling, {}, NOW)["conditions"], "Ready")
    assert found is not None
    assert (found["reason"], found["message"]) == (
        "RollingUpdate",
        "Rolling the workers to the new spec: 1 of 2 updated, 1 of 2 ready",
    )
    scaling_up = settled(ready_replicas=1, updated_replicas=1)  # same revision: the second is new
    assert ready(plan_base_model_status(SPEC, 1, scaling_up, {}, NOW)) == ("False", "WorkersStarting")


def test_insufficient_gpu_is_stalled_and_says_what_is_missing() -> None:
    stuck = settled(ready_replicas=0, pods=(FleetPod("w-0", False, "4 Insufficient nvidia.com/gpu."),))
    status = plan_base_model_status(SPEC, 1, stuck, {}, NOW)
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Stalled"]["status"] == "True"
    assert by_type["Reconciling"]["status"] == "False"
    assert "1 free nvidia.com/gpu" in by_type["Ready"]["message"]


def test_an_object_the_api_server_refused_stalls_the_base_model_with_its_answer() -> None:
    answer = 'StatefulSet.apps "tiny-worker" is invalid: spec.template.spec.nodeSelector: Invalid value'
    for observed in (FleetObservation(refused=answer), settled(refused=answer)):
        status = plan_base_model_status(SPEC, 1, observed, {}, NOW)
        by_type = {c["type"]: c for c in status["conditions"]}
        assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("False", "ObjectRefused")
        assert by_type["Ready"]["message"] == answer
        assert (by_type["Stalled"]["status"], by_type["Reconciling"]["status"]) == ("True", "False")


def test_starting_fleet_is_reconciling_and_progressing() -> None:
    status = plan_base_model_status(SPEC, 1, settled(ready_replicas=1), {}, NOW)
    by_type = {c["type"]: c["status"] for c in status["conditions"]}
    assert (by_type["Progressing"], by_type["Reconciling"], by_type["Stalled"]) == ("True", "True", "False")


def test_counts_and_summaries_for_printer_columns() -> None:
    status = plan_base_model_status(SPEC, 3, settled(ready_replicas=1), {}, NOW)
    assert (status["workers"], status["slotsSummary"], status["observedGeneration"]) == ("1/2", "0/4", 3)
    assert status["slots"]["gpuTotal"] == 4


def test_a_fleet_that_scales_on_load_shows_the_load_its_agents_report() -> None:
    placements = [{"status": {"requests": 2.5}}, {"status": {"requests": 1.0}}, {"status": {"adapters": []}}]
    assert requests_reported(read_status(p["status"]) for p in placements) == 3.5
    assert requests_reported([read_status({})]) is None  # no agent reports a load
    scaling = SPEC.model_copy(
        update={"replicas": SPEC.replicas.model_copy(update={"target_requests_per_worker": 8})}
    )
    assert plan_base_model_status(scaling, 1, settled(requests=3.5), {}, NOW)["requests"] == 3.5
    assert plan_base_model_status(scaling, 1, settled(), {}, NOW)["requests"] == 0.0  # none reported yet
    assert "requests" not in plan_base_model_status(SPEC, 1, settled(requests=3.5), {}, NOW)  # no target


def test_slots_in_use_come_from_what_the_agents_report() -> None:
    placements = [
        {"status": {"adapters": [{"name": "a", "tier": "GPU"}, {"name": "b", "tier": "CPU"}]}},
        {"status": {"adapters": [{"name": "a", "tier": "GPU"}, {"name": "c", "tier": "Disk"}]}},
        {"spec": {"adapters": [{"name": "d", "tier": "GPU"}]}},  # wanted, not yet reported: not in use
    ]
    assert slots_used(read_status(p.get("status")) for p in placements) == (2, 1)
    status = plan_base_model_status(SPEC, 1, settled(gpu_used=2, cpu_used=1), {}, NOW)
    assert status["slotsSummary"] == "2/8"
    assert status["slots"] == {"gpuTotal": 8, "gpuUsed": 2, "cpuTotal": 32, "cpuUsed": 3}


def test_replanning_an_unchanged_fleet_writes_nothing() -> None:
    first = plan_base_model_status(SPEC, 1, settled(), {}, NOW)
    later = plan_base_model_status(SPEC, 1, settled(), first, NOW + timedelta(minutes=5))
    assert not status_changed(first, later)


def test_transition_time_moves_only_when_status_flips() -> None:
    first = merge_conditions([], [ConditionUpdate("Ready", "False", "WorkersStarting", "0 of 2")], 1, NOW)
    same = merge_conditions(first, [ConditionUpdate("Ready", "False", "WorkersStarting", "1 of 2")], 1,
                            NOW + timedelta(seconds=30))  # fmt: skip
    flipped = merge_conditions(
        same, [ConditionUpdate("Ready", "True", "WorkersReady")], 1, NOW + timedelta(minutes=1)
    )
    assert same[0]["lastTransitionTime"] == "2026-11-22T12:00:00Z"
    assert same[0]["message"] == "1 of 2"
    assert flipped[0]["lastTransitionTime"] == "2026-11-22T12:01:00Z"


def test_other_conditions_are_kept() -> None:
    previous = merge_conditions([], [ConditionUpdate("PlacementsReady", "True", "Placed")], 1, NOW)
    merged = merge_conditions(previous, [ConditionUpdate("Ready", "True", "WorkersReady")], 2, NOW)
    assert [c["type"] for c in merged] == ["PlacementsReady", "Ready"]


def test_desired_workers_are_what_the_statefulset_runs_once_the_fleet_scaled() -> None:
    # The scaler grew the StatefulSet to 3 (replicas.min is 2): two ready is not Ready yet.
    selector = "loraplex.dev/base-model=tiny,app.kubernetes.io/component=worker"
    status = plan_base_model_status(SPEC, 1, settled(replicas=3, updated_replicas=3), {}, NOW, selector)
    assert (status["desiredWorkers"], status["workers"]) == (3, "2/3")
    assert status["workerSelector"] == selector  # what `kubectl scale` and HPAs read
    assert ready(status) == ("False", "WorkersStarting")


def test_only_answers_that_refuse_the_object_itself_become_object_refused() -> None:
    import json

    from kubernetes.client.exceptions import ApiException

    from loraplex.operator.basemodel_handlers import refusal

    invalid = ApiException(status=422, reason="Unprocessable Entity")
    answer = 'StatefulSet.apps "tiny-worker" is invalid: nodeSelector'
    invalid.body = json.dumps({"message": answer})
    assert refusal(invalid) == f"the API server refused an object of the fleet: {answer}"
    forbidden = ApiException(status=403, reason="Forbidden")  # no body: the reason stands in
    assert refusal(forbidden) == "the API server refused an object of the fleet: Forbidden"
    for passing in (409, 429, 500, 503):  # a conflict, throttling, the server's own trouble: retried as is
        assert refusal(ApiException(status=passing, reason="x")) is None


# What the kubelet writes for worker pods that will not start: a crash loop (the log's last lines as
# the termination message, FallbackToLogsOnError), an image it cannot pull, a missing Secret key.
def crashing_status(container: str, restarts: int, log_tail: str, init: bool = False) -> dict[str, Any]:
    entry = {
        "name": container,
        "restartCount": restarts,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": log_tail}},
    }
    return {"initContainerStatuses" if init else "containerStatuses": [entry]}


def exited(container: str, restarts: int, log_tail: str, init: bool = False) -> dict[str, Any]:
    """Between a failed run and the kubelet's next sync the container shows terminated, not waiting."""
    entry = {
        "name": container,
        "restartCount": restarts,
        "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": log_tail}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "an older run's"}},
    }
    return {"initContainerStatuses" if init else "containerStatuses": [entry]}


def retrying(container: str, restarts: int, log_tail: str, ready: bool = False) -> dict[str, Any]:
    """Its next try after a failed exit, running (and for vLLM, not ready yet)."""
    entry = {
        "name": container,
        "restartCount": restarts,
        "ready": ready,
        "state": {"running": {"startedAt": "T"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": log_tail}},
    }
    return {"containerStatuses": [entry]}


def waiting(container: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "containerStatuses": [
            {"name": container, "state": {"waiting": {"reason": reason, "message": message}}}
        ]
    }


def stuck_fleet(pod_status: dict[str, Any], fetching: str | None = None) -> FleetObservation:
    pod = FleetPod("w-1", False, trouble=container_trouble(pod_status), fetching_model_since=fetching)
    return settled(ready_replicas=1, pods=(FleetPod("w-0", True), pod))


def conditions_of(observation: FleetObservation) -> dict[str, dict[str, Any]]:
    status = plan_base_model_status(SPEC, 1, observation, {}, NOW)
    return {c["type"]: c for c in status["conditions"]}


TRACEBACK = "Traceback (most recent call last):\n  File ...\nValueError: max_lora_rank 8 is too small\n\n"


@pytest.mark.parametrize(
    ("pod_status", "reason", "says"),
    [
        (
            crashing_status("vllm", 3, TRACEBACK),
            "WorkerCrashLoop",
            "w-1: container vllm restarted 3 times: exit code 1 (Error): ValueError: max_lora_rank 8 is too",
        ),
        (
            crashing_status("fetch-model", 4, "NotFound: s3://models/llama/ has no objects", init=True),
            "ModelFetchFailed",
            "w-1: copying the base model failed 5 times (fetch-model): exit code 1 (Error): NotFound: s3://models/llama/",
        ),
        (
            exited("fetch-model", 4, "fetch-model failed (SourceUnreachable): https://h/m.tar", init=True),
            "ModelFetchFailed",
            "w-1: copying the base model failed 5 times (fetch-model): exit code 1 (Error): fetch-model",
        ),
        (
            retrying("vllm", 3, ""),
            "WorkerCrashLoop",
            "w-1: container vllm restarted 3 times: exit code 137 (OOMKilled)",
        ),
        (
            waiting("vllm", "ImagePullBackOff", 'Back-off pulling image "vllm/vllm-openai:nope"'),
            "ImagePullFailed",
            'w-1: container vllm cannot pull its image: Back-off pulling image "vllm/vllm-openai:nope"',
        ),
        (
            waiting("agent", "CreateContainerConfigError", 'secret "store" not found'),
            "ContainerConfigError",
            'w-1: container agent cannot be created: secret "store" not found',
        ),
    ],
)
def test_a_worker_that_cannot_start_stalls_the_base_model_naming_the_pod_container_and_cause(
    pod_status: dict[str, Any], reason: str, says: str
) -> None:
    found = conditions_of(stuck_fleet(pod_status))
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", reason)
    assert found["Ready"]["message"].startswith(says)
    assert (found["Stalled"]["status"], found["Reconciling"]["status"], found["Degraded"]["status"]) == (
        "True",
        "False",
        "True",
    )


def test_a_crash_or_two_while_starting_and_a_first_pull_error_are_still_starting() -> None:
    for pod_status in (
        crashing_status("vllm", 2, TRACEBACK),
        waiting("vllm", "ErrImagePull", "connection reset"),
        retrying("vllm", 5, "", ready=True),  # up again after its crashes (the pod awaits the agent)
        waiting("vllm", "ContainerCreating", ""),
    ):
        found = conditions_of(stuck_fleet(pod_status))
        assert found["Ready"]["reason"] == "WorkersStarting"
        assert (found["Stalled"]["status"], found["Reconciling"]["status"]) == ("False", "True")


def test_a_worker_copying_the_base_model_says_so_while_the_fleet_starts() -> None:
    status = {"initContainerStatuses": [{"name": "fetch-model", "state": {"running": {"startedAt": "T1"}}}]}
    pod = FleetPod("w-1", False, fetching_model_since=init_running_since(status, "fetch-model"))
    found = conditions_of(settled(ready_replicas=1, pods=(FleetPod("w-0", True), pod)))
    assert found["Ready"]["reason"] == "FetchingBaseModel"
    assert (
        found["Ready"]["message"]
        == "1 of 2 workers ready; 1 copying the base model from /m (first: w-1, since T1; "
        "its progress: kubectl logs w-1 -c fetch-model)"
    )
    assert (found["Stalled"]["status"], found["Reconciling"]["status"]) == ("False", "True")
    assert (
        init_running_since(
            {"initContainerStatuses": [{"name": "fetch-model", "state": {"terminated": {}}}]}, "fetch-model"
        )
        is None
    )


def test_a_fleet_is_ready_only_once_a_router_answers_and_a_crashing_router_stalls_it() -> None:
    waiting_router = conditions_of(settled(router_pods=(FleetPod("r-0", False),)))
    assert waiting_router["Ready"]["reason"] == "RouterStarting"
    assert waiting_router["Ready"]["message"] == "2 of 2 workers ready; no router pod ready yet"
    assert (waiting_router["Stalled"]["status"], waiting_router["Reconciling"]["status"]) == ("False", "True")
    assert conditions_of(settled(router_pods=()))["Ready"]["reason"] == "RouterStarting"
    crashing = FleetPod(
        "r-0", False, trouble=container_trouble(crashing_status("router", 3, "KeyError: 'x'"))
    )
    stuck = conditions_of(settled(router_pods=(crashing, FleetPod("r-1", False))))
    assert (stuck["Ready"]["reason"], stuck["Stalled"]["status"]) == ("RouterCrashLoop", "True")
    assert (
        stuck["Ready"]["message"]
        == "r-0: container router restarted 3 times: exit code 1 (Error): KeyError: 'x'"
    )
    pending = conditions_of(settled(router_pods=(FleetPod("r-0", False, "0/1 nodes: Insufficient cpu"),)))
    assert (pending["Ready"]["reason"], pending["Ready"]["message"]) == (
        "Unschedulable",
        "r-0: 0/1 nodes: Insufficient cpu",
    )


def test_an_image_the_kubelet_keeps_failing_to_pull_stays_one_reason_between_its_back_offs() -> None:
    backing_off = stuck_fleet(waiting("vllm", "ImagePullBackOff", 'Back-off pulling image "x"'))
    pulling_again = stuck_fleet(waiting("vllm", "ErrImagePull", "no such host"))
    status = plan_base_model_status(SPEC, 1, backing_off, {}, NOW)
    again = plan_base_model_status(SPEC, 1, pulling_again, status, NOW + timedelta(seconds=20))
    assert ready(again) == ("False", "ImagePullFailed")
    assert condition(again["conditions"], "Ready")["message"] == (  # type: ignore[index]
        "w-1: container vllm cannot pull its image: no such host"
    )
    assert newly_stalled(status, again) is None  # so no second Warning Event
    assert ready(plan_base_model_status(SPEC, 1, pulling_again, {}, NOW)) == ("False", "WorkersStarting")


# What a kubelet shows of a pod whose volume will not mount: scheduled, every container waiting.
MOUNTING_ROUTER = {
    "phase": "Pending",
    "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-22T11:58:00Z"},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
    ],
    "containerStatuses": [
        {"name": "router", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
    ],
}
MOUNTING_WORKER = {
    **MOUNTING_ROUTER,
    "initContainerStatuses": [{"name": "fetch-model", "state": {"waiting": {"reason": "PodInitializing"}}}],
    "containerStatuses": [
        {"name": "vllm", "state": {"waiting": {"reason": "PodInitializing"}}},
        {"name": "agent", "state": {"waiting": {"reason": "PodInitializing"}}},
    ],
}


def test_a_pod_is_setting_up_from_its_scheduling_until_the_kubelet_starts_a_container() -> None:
    assert setting_up_since(MOUNTING_ROUTER) == "2026-11-22T11:58:00Z"
    assert setting_up_since(MOUNTING_WORKER) == "2026-11-22T11:58:00Z"
    fetching = {
        **MOUNTING_WORKER,
        "initContainerStatuses": [{"name": "fetch-model", "state": {"running": {}}}],
    }
    pulling_failed = {**MOUNTING_ROUTER, **waiting("router", "ImagePullBackOff", "back-off")}
    unscheduled = {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}
    for started in (fetching, pulling_failed, unscheduled, {}):
        assert setting_up_since(started) is None
    body = {"metadata": {"name": "r-0", "uid": "u-1"}, "status": MOUNTING_ROUTER}
    assert fleet_pod(body) == FleetPod("r-0", False, uid="u-1", setting_up_since="2026-11-22T11:58:00Z")
    leaving = {**body, "metadata": {**body["metadata"], "deletionTimestamp": "T"}}
    assert fleet_pod(leaving).setting_up_since is None


def kubelet_event(reason: str, message: str, at: str, kind: str = "Warning") -> dict[str, Any]:
    return {"type": kind, "reason": reason, "message": message, "lastTimestamp": at}


def test_a_pods_volume_trouble_is_the_latest_mount_or_attach_event_the_kubelet_wrote() -> None:
    missing = 'MountVolume.SetUp failed for volume "api-keys-0" : secret "team-keys" not found'
    events = [
        kubelet_event("FailedMount", "older: configmap not found", "2026-11-22T11:58:05Z"),
        kubelet_event("FailedMount", missing, "2026-11-22T11:59:10Z"),
        kubelet_event("Pulling", 'Pulling image "router"', "2026-11-22T11:59:30Z", kind="Normal"),
        kubelet_event("BackOff", "Back-off restarting failed container", "2026-11-22T11:59:40Z"),
    ]
    assert volume_trouble(events) == f"FailedMount: {missing}"
    multi = 'Multi-Attach error for volume "pvc-1" Volume is already exclusively attached to one node'
    attach = {
        "type": "Warning",
        "reason": "FailedAttachVolume",
        "message": multi,
        "eventTime": "2026-11-22T12:00:00.5Z",
    }
    assert volume_trouble([*events, attach]) == f"FailedAttachVolume: {multi}"
    assert volume_trouble(events[2:]) is None


def test_a_volume_that_will_not_mount_stalls_the_base_model_naming_the_pod_and_the_kubelets_words() -> None:
    says = 'FailedMount: MountVolume.SetUp failed for volume "api-keys-0" : secret "team-keys" not found'
    router = FleetPod("r-0", False, setting_up_since="T", volume_trouble=says)
    found = conditions_of(settled(router_pods=(router,)))
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", "VolumeMountFailed")
    assert found["Ready"]["message"] == f"r-0: {says}"
    assert (found["Stalled"]["status"], found["Reconciling"]["status"], found["Degraded"]["status"]) == (
        "True",
        "False",
        "True",
    )
    workers = (
        FleetPod("w-0", False, volume_trouble="FailedMount: x"),
        FleetPod("w-1", False, volume_trouble="y"),
    )
    message = conditions_of(settled(ready_replicas=0, pods=workers))["Ready"]["message"]
    assert message == "w-0: FailedMount: x (2 pods in all)"
    # Setting up without a word from the kubelet is still starting.
    quiet = conditions_of(settled(router_pods=(FleetPod("r-0", False, setting_up_since="T"),)))
    assert quiet["Ready"]["reason"] == "RouterStarting"


def ran(status: dict[str, Any], started: str, finished: str) -> dict[str, Any]:
    """`status` with its container's failed run (the current one if it ended, else the last) timed."""
    (entry,) = status["containerStatuses"]
    states = ("state", "lastState") if "terminated" in entry["state"] else ("lastState",)
    for key in states:
        entry[key]["terminated"] |= {"startedAt": started, "finishedAt": finished}
    return status


def test_a_worker_that_fails_after_serving_for_a_while_is_starting_again_not_crash_looping() -> None:
    # Restarts add up over a pod's life; the kubelet resets its back-off after 10 minutes of running.
    hours = ("2026-11-22T08:00:00Z", "2026-11-22T11:59:00Z")
    for shape in (crashing_status, exited, retrying):
        found = conditions_of(stuck_fleet(ran(shape("vllm", 7, "killed"), *hours)))
        assert found["Ready"]["reason"] == "WorkersStarting", shape
        assert found["Stalled"]["status"] == "False"
    seconds = ("2026-11-22T11:58:00Z", "2026-11-22T11:58:40Z")
    for shape in (crashing_status, exited, retrying):
        assert conditions_of(stuck_fleet(ran(shape("vllm", 7, "x"), *seconds)))["Ready"]["reason"] == (
            "WorkerCrashLoop"
        )
