"""A TrainingJob's phase machine: from what its attempt's Job and pod show to the status and next step.

Pure: the caller passes the parsed spec, the BaseModel (or None), the current
status, a view of the current attempt's Job and pod, the node the admission
planner gave it (if any), and `now`. It returns the status to write and what
to do: create the attempt's Job, publish the trained adapter, post an Event.

Phases: `Queued` (valid, waiting for GPUs or for Kueue) -> `Running` (an
attempt is admitted to a node; its pod may still be starting) ->
`Succeeded` | `Failed`; `Preempted` when serving took the GPUs back (the pod
had the `DisruptionTarget` condition, the trainer exited 75 after its final
checkpoint, or the pod vanished without an exit code): the next pass re-queues
it with `attempts + 1` and the next attempt resumes from the same checkpoint
folder. A trainer crash (exit 1) re-queues the same way until
`maxAttempts`; a bad config (exit 2) or a permanent trainer failure (exit 3
with the trainer's reason, e.g. `NonFiniteLoss`, `DatasetNotFound`) fails the
job and nothing is published. An unknown base model, a rank above the
BaseModel's `engine.maxLoraRank` or a dataset outside the admin's dataset
roots (`DatasetOutsideRoots`, see training_roots) fails the job before
anything runs; those are re-checked on every pass, so fixing the cause
re-queues the job.

A job with `spec.schedule` is run again after it Succeeds: the success sets
`nextRunTime` (the first time the schedule names after it), and the first pass
at or after that time starts run `run + 1` (attempts from 0, a fresh
checkpoint folder, the dataset read again) exactly as a new job would be
queued. Only a Succeeded job with no attempt in flight is rerun, so two runs
never overlap; a run missed while the operator was down starts once, and the
next time is counted from its success, not from the missed one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, ParamSpec

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.conditions import ConditionUpdate, merge_conditions, timestamp
from loraplex.api.trainer import EXIT_CONFIG, EXIT_FAILED, EXIT_PREEMPTED, TENANT_PREPARING, TENANT_RUNNING
from loraplex.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from loraplex.api.wire import as_wire
from loraplex.operator.training_progress import final_progress
from loraplex.operator.training_roots import Location, dataset_problem
from loraplex.operator.training_schedule import next_run_time, parse_time, schedule_problem

P = ParamSpec("P")
VALIDATION_REASONS = ("UnknownBaseModel", "RankTooHigh", "ScheduleInvalid", "DatasetOutsideRoots")
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class PodView:
    """The trainer pod of an attempt, as the pod index saw it last."""

    name: str
    node: str | None
    phase: str
    disrupted: bool = False  # condition DisruptionTarget=True (preempted, evicted, node going away)
    exit_code: int | None = None
    message: str | None = None  # the container's termination message: the trainer's result JSON
    deleting: bool = False


@dataclass(frozen=True)
class JobView:
    """The batch/v1 Job of an attempt."""

    name: str
    node: str | None  # its kubernetes.io/hostname node selector
    suspended: bool = False
    complete: bool = False
    failed: bool = False
    failure_reason: str = ""
    failure_message: str = ""
    pods: tuple[PodView, ...] = ()
    group: str | None = None  # a warm trainer's Job: its trainer group (training_warm), as JSON
    deleting: bool = False


@dataclass(frozen=True)
class Result:
    """What the trainer published for the job's adapter."""

    uri: str
    sha256: str


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Step:
    status: dict[str, Any]  # the TrainingJobStatus to write, wire names; None deletes a field
    create_attempt: int | None = None  # create this attempt's Job (and ConfigMap)
    node: str | None = None  # on this node (None with create_attempt: suspended, for Kueue)
    publish: Result | None = None
    events: tuple[Event, ...] = field(default_factory=tuple)


def validate(
    namespace: str, spec: TrainingJobSpec, base: BaseModelSpec | None, dataset_roots: Sequence[Location]
) -> tuple[str, str] | None:
    """(reason, message) when the job cannot run as written; None when it can."""
    problem = schedule_problem(spec.schedule) if spec.schedule else None
    if problem is not None:
        return "ScheduleInvalid", f"{problem}; fix spec.schedule"
    outside = dataset_problem(spec.dataset.uri, dataset_roots)
    if outside is not None:
        return outside
    if base is None:
        return (
            "UnknownBaseModel",
            f"spec.baseModel: no BaseModel {namespace}/{spec.base_model}; create it or fix the name",
        )
    if spec.lora.rank > base.engine.max_lora_rank:
        return (
            "RankTooHigh",
            f"spec.lora.rank {spec.lora.rank} is above BaseModel {spec.base_model}'s engine.maxLoraRank "
            f"{base.engine.max_lora_rank}; lower the rank or raise maxLoraRank",
        )
    return None


def output_conflict(
    spec: TrainingJobSpec, live: Mapping[str, Any] | None, trained: str | None
) -> tuple[str, str] | None:
    """(reason, message) when the job's output LoRAAdapter (`live`, as the API server has it; None:
    there is none) belongs to another base model, so no revision the job trains may become its;
    `trained`: where the revision it did train is, if any."""
    theirs = (live or {}).get("spec", {}).get("baseModel")
    if live is None or theirs == spec.base_model:
        return None
    name, ours = spec.output.adapter_name, spec.base_model
    what = (
        f"the adapter trained on {ours} was not published to it; it is at {trained}"
        if trained
        else "so the job was not started"
    )
    return (
        "OutputAdapterOfAnotherBaseModel",
        f"LoRAAdapter {name} belongs to BaseModel {theirs}, not {ours}: {what}; "
        "set spec.output.adapterName to another name",
    )


def init_revision(
    spec: TrainingJobSpec, status: Mapping[str, Any], live: Mapping[str, Any] | None, published_root: str
) -> tuple[str | None, tuple[str, str] | None]:
    """The published revision a run of `spec` starts from (`spec.initFrom: published`), and
    (reason, message) when it cannot: the output LoRAAdapter (`live`, None: there is none yet, so the
    first run starts from scratch) serves a revision outside the training store's `published_root`
    (`<store>/adapters/<namespace>/<adapter>`), where no trainer can read it. A run keeps the revision
    it started from (`status.initRevision`) across its attempts."""
    if spec.init_from != "published":
        return None, None
    if status.get("initRevision"):
        return str(status["initRevision"]), None
    source = (live or {}).get("spec", {}).get("source") or {}
    sha256, uri = source.get("sha256"), str(source.get("uri") or "").rstrip("/")
    if live is None or not sha256:
        return None, None
    if uri == f"{published_root}/{sha256}":
        return str(sha256), None
    return None, (
        "InitRevisionOutsideStore",
        f"spec.initFrom is published, but LoRAAdapter {spec.output.adapter_name} serves {uri or 'no uri'}, "
        f"not a revision in the training store ({published_root}/<sha256>); set spec.initFrom: scratch, "
        "or let a TrainingJob publish the adapter first",
    )


def output_refused(
    planned: Mapping[str, Any], published: str | None, now: datetime, reason: str, message: str
) -> Step:
    """The job's step when its output LoRAAdapter cannot take a revision from it (`planned`: the status
    the step had, starting an attempt or publishing one; `published`: the revision an earlier run
    published, if any): Failed, terminal; a trained revision's files stay in the store."""
    step = _failed(
        planned,
        int(planned.get("observedGeneration") or 0),
        now,
        reason,
        message,
        attempts=int(planned.get("attempts") or 0),
    )
    step.status["adapterRevision"] = published  # this run's revision was not published
    return as_status(step)


def parse_result(message: str | None, adapter: str) -> tuple[int | None, dict[str, Any] | None]:
    """The trainer's summary (`resultPath`): its exit code and the entry for `adapter`."""
    if not message:
        return None, None
    try:
        summary = json.loads(message)
    except ValueError:
        return None, None
    if not isinstance(summary, dict):
        return None, None
    entries = [a for a in summary.get("adapters", []) if isinstance(a, dict) and a.get("name") == adapter]
    code = summary.get("exitCode")
    return (code if isinstance(code, int) else None), (entries[0] if entries else None)


def _last_pod(job: JobView) -> PodView | None:
    return job.pods[-1] if job.pods else None


def as_status(step: Step) -> Step:
    """`step` with its status checked against TrainingJobStatus and written as the model writes it.

    A field the step sets to None stays None: in the status merge patch it deletes the field.
    """
    return replace(step, status=as_wire(TrainingJobStatus, step.status))


def _status_checked(plan: Callable[P, Step]) -> Callable[P, Step]:
    @functools.wraps(plan)
    def checked(*args: P.args, **kwargs: P.kwargs) -> Step:
        return as_status(plan(*args, **kwargs))

    return checked


@_status_checked
def plan_training(
    *,
    namespace: str,
    name: str,
    generation: int,
    spec: TrainingJobSpec,
    base: BaseModelSpec | None,
    status: Mapping[str, Any],
    job: JobView | None,
    admitted_node: str | None,
    max_attempts: int,
    now: datetime,
    dataset_roots: Sequence[Location],
    admitted_trainer: str | None = None,
    tenant: Mapping[str, Any] | None = None,
) -> Step:
    """The status this job should have now and the one action that gets it there.

    A shared job in a warm trainer (`status.placement.trainer`) passes that trainer's Job as `job`
    and its entry in the trainer's last `tenants` report as `tenant`; `admitted_trainer` (with
    `admitted_node`): the warm trainer the job was just placed in.
    """
    current = dict(status)
    phase = current.get("phase")
    attempts = int(current.get("attempts") or 0)
    reason = _ready_reason(current)
    fresh_spec = current.get("observedGeneration") != generation
    active = _in_flight(current, job, tenant)

    if fresh_spec and not active:  # a changed spec starts afresh (a running attempt finishes first)
        if job is not None:
            attempts += 1  # the finished attempt's Job keeps its name
        phase, reason = None, None
        current["completionTime"] = None
        current["nextRunTime"] = None
        current["initRevision"] = None
        current["observedGeneration"] = generation
        job = None
    if phase == "Succeeded" and not active:
        due = _due(current, spec, now)
        if due is None:
            return Step(current)
        run = int(current.get("run") or 0) + 1  # a fresh run: new Job names, new checkpoint folder
        current.update(
            run=run, nextRunTime=None, completionTime=None, startTime=None, progress=None,
            placement=None, checkpointUri=None, initRevision=None,
        )  # fmt: skip
        started = Event("Normal", "ScheduledRun", f"started run {run}, due {timestamp(due)} by spec.schedule")
        step = _plan_run(
            namespace, name, generation, spec, base, current, None, None, 0, admitted_node,
            max_attempts, now, dataset_roots, admitted_trainer, None,
        )  # fmt: skip
        return replace(step, events=(started, *step.events))
    if phase in TERMINAL and reason not in VALIDATION_REASONS:
        return Step(current)
    return _plan_run(
        namespace, name, generation, spec, base, current, phase, job, attempts, admitted_node,
        max_attempts, now, dataset_roots, admitted_trainer, tenant,
    )  # fmt: skip


def placed_trainer(status: Mapping[str, Any]) -> str | None:
    """The warm trainer a job's status places it in (`status.placement.trainer`)."""
    return (status.get("placement") or {}).get("trainer")


def _in_flight(current: Mapping[str, Any], job: JobView | None, tenant: Mapping[str, Any] | None) -> bool:
    """Whether the job's trainer still works for it: its attempt's Job, or for a tenant of a warm
    trainer, that trainer while it has not reported the tenant finished."""
    if job is None or job.complete or job.failed:
        return False
    if placed_trainer(current) is None:
        return True
    return (tenant or {}).get("phase") not in TERMINAL


def _due(current: dict[str, Any], spec: TrainingJobSpec, now: datetime) -> datetime | None:
    """When a Succeeded job's next scheduled run is due and it is due now; None (and `current`
    updated to show the next run time, if any) when not."""
    if not spec.schedule:
        if current.get("nextRunTime"):
            current["nextRunTime"] = None
        return None
    due = parse_time(current.get("nextRunTime"))
    if due is None:
        try:
            due = next_run_time(spec.schedule, parse_time(current.get("completionTime")) or now)
        except ValueError:
            return None  # said once, by a Warning Event when the run succeeded
        current["nextRunTime"] = timestamp(due)
    return due if now >= due else None


def _plan_run(
    namespace: str,
    name: str,
    generation: int,
    spec: TrainingJobSpec,
    base: BaseModelSpec | None,
    current: dict[str, Any],
    phase: Any,
    job: JobView | None,
    attempts: int,
    admitted_node: str | None,
    max_attempts: int,
    now: datetime,
    dataset_roots: Sequence[Location],
    admitted_trainer: str | None,
    tenant: Mapping[str, Any] | None,
) -> Step:
    """The status of a run that is not finished (or a failed one whose cause may be fixed now)."""
    active = _in_flight(current, job, tenant)

    if not active:
        problem = validate(namespace, spec, base, dataset_roots)
        if problem is not None and job is None:
            return _failed(current, generation, now, *problem, attempts=attempts)
        if phase == "Failed":  # the BaseModel it lacked is there now, or allows the rank
            current["completionTime"] = None
            phase = None

    trainer = placed_trainer(current)
    if job is not None and trainer is not None:
        return _follow_tenant(current, name, generation, spec, job, tenant, attempts, max_attempts, now)
    if job is not None:
        return _follow(current, name, generation, spec, job, attempts, max_attempts, now)

    if phase == "Running" and trainer is not None:  # its warm trainer's Job is missing: the pass makes it
        return Step(_running(current, generation, now, attempts, current["placement"].get("node")))
    if phase == "Running" and (current.get("placement") or {}).get("node"):
        node = current["placement"]["node"]  # admitted earlier; its Job is missing: make it again
        return Step(_running(current, generation, now, attempts, node), attempts, node)
    if phase == "Preempted":
        message = "re-queued after preemption; the next attempt resumes from the last checkpoint"
        return Step(_queued(current, generation, now, attempts, "Requeued", message))
    if spec.queue_name:
        queued = _queued(
            current,
            generation,
            now,
            attempts,
            "WaitingForKueue",
            f"suspended Job in LocalQueue {spec.queue_name}",
        )
        return Step(queued, attempts, None)
    if admitted_node is not None and admitted_trainer is not None:
        running = _running(current, generation, now, attempts, admitted_node)
        running["placement"] = {"node": admitted_node, "trainer": admitted_trainer}
        message = f"Joined warm trainer {admitted_trainer} on node {admitted_node} (attempt {attempts})"
        return Step(running, events=(Event("Normal", "Admitted", message),))
    if admitted_node is not None:
        step = Step(
            _running(current, generation, now, attempts, admitted_node),
            attempts,
            admitted_node,
            events=(Event("Normal", "Admitted", f"Admitted attempt {attempts} on node {admitted_node}"),),
        )
        return step
    gpus = spec.resources.gpu
    message = f"waiting for {gpus} free GPU{'s' if gpus != 1 else ''} that serving does not need"
    return Step(_queued(current, generation, now, attempts, "WaitingForCapacity", message))


def _follow(
    current: dict[str, Any],
    name: str,
    generation: int,
    spec: TrainingJobSpec,
    job: JobView,
    attempts: int,
    max_attempts: int,
    now: datetime,
) -> Step:
    """The status from the current attempt's Job and pod."""
    pod = _last_pod(job)
    code, entry = parse_result(pod.message if pod else None, name)
    if entry is not None:  # the attempt ended: its summary says the last step, logs or not
        current["progress"] = final_progress(current.get("progress"), entry)
    exit_code = pod.exit_code if pod and pod.exit_code is not None else code
    succeeded = job.complete or (pod is not None and pod.phase == "Succeeded")
    if succeeded:
        if entry and entry.get("uri") and entry.get("sha256"):
            return _succeeded(current, generation, now, spec, entry, attempts)
        return _failed(
            current, generation, now, "ResultMissing",
            "the trainer exited 0 without a result for this adapter in its termination message",
            attempts=attempts,
        )  # fmt: skip
    preempted = (
        (pod is not None and (pod.disrupted or exit_code == EXIT_PREEMPTED))
        or "DisruptionTarget" in job.failure_message
        or (job.failed and (pod is None or (exit_code is None and pod.phase != "Succeeded")))
    )
    if job.failed or (pod is not None and pod.phase == "Failed"):
        if preempted:
            return _preempted(current, generation, now, attempts, job)
        if exit_code == EXIT_CONFIG:
            detail = (entry or {}).get("message") or "the trainer refused its config"
            return _failed(current, generation, now, "ConfigInvalid", str(detail), attempts=attempts)
        if exit_code == EXIT_FAILED:
            why = str((entry or {}).get("reason") or "TrainingFailed")
            detail = str((entry or {}).get("message") or "the trainer failed this adapter for good")
            return _failed(current, generation, now, why, detail, attempts=attempts)
        return _crashed(current, generation, now, attempts, max_attempts, exit_code)
    if job.suspended:
        return Step(
            _queued(current, generation, now, attempts, "WaitingForKueue", f"Job {job.name} is suspended")
        )
    node = (pod.node if pod else None) or job.node or (current.get("placement") or {}).get("node")
    running = _running(current, generation, now, attempts, node)
    if pod is not None:
        running["placement"] = {"node": node, "pod": pod.name} if node else {"pod": pod.name}
        if pod.phase == "Running":
            if not running.get("startTime"):
                running["startTime"] = timestamp(now)
            running["conditions"] = merge_conditions(
                current.get("conditions", []),
                _conditions("False", "Training", f"pod {pod.name} is training on node {node}", "Running"),
                generation,
                now,
            )
    return Step(running)


def _follow_tenant(
    current: dict[str, Any],
    name: str,
    generation: int,
    spec: TrainingJobSpec,
    trainer: JobView,
    tenant: Mapping[str, Any] | None,
    attempts: int,
    max_attempts: int,
    now: datetime,
) -> Step:
    """The status of a tenant of warm trainer `trainer`, from the trainer's Job and pod and the
    tenant's entry in the trainer's last `tenants` report (None: not reported yet)."""
    state = dict(tenant or {})
    pod = _last_pod(trainer)
    if state.get("phase") in TERMINAL:
        current["progress"] = final_progress(current.get("progress"), state)
    if state.get("phase") == "Succeeded" and state.get("uri") and state.get("sha256"):
        return _left_trainer(_succeeded(current, generation, now, spec, state, attempts))
    if state.get("phase") == "Failed":
        why = str(state.get("reason") or "TrainingFailed")
        detail = str(state.get("message") or "the trainer failed this adapter for good")
        return _left_trainer(_failed(current, generation, now, why, detail, attempts=attempts))
    exit_code = pod.exit_code if pod is not None else None
    if trainer.complete or trainer.failed or (pod is not None and pod.phase in ("Succeeded", "Failed")):
        preempted = (
            (pod is not None and (pod.disrupted or exit_code == EXIT_PREEMPTED))
            or "DisruptionTarget" in trainer.failure_message
            or (trainer.failed and (pod is None or exit_code is None))
        )
        if preempted:
            return _preempted(current, generation, now, attempts, trainer)
        if exit_code == 0 or trainer.complete:  # it went idle before it read this tenant
            message = f"warm trainer {trainer.name} exited before it took the job; re-queued"
            queued = _queued(current, generation, now, attempts, "Requeued", message)
            return Step(queued)
        if exit_code in (EXIT_CONFIG, EXIT_FAILED):
            return _failed(
                current, generation, now, "TrainerFailed",
                f"warm trainer {trainer.name} failed every tenant (exit code {exit_code}); see its pod log",
                attempts=attempts,
            )  # fmt: skip
        return _crashed(current, generation, now, attempts, max_attempts, exit_code)
    node = (pod.node if pod else None) or trainer.node or (current.get("placement") or {}).get("node")
    running = _running(current, generation, now, attempts, node)
    running["placement"] = {
        key: value
        for key, value in (("node", node), ("pod", pod.name if pod else None), ("trainer", trainer.name))
        if value
    }
    tenant_phase = state.get("phase")
    if pod is not None and pod.phase == "Running" and tenant_phase in (TENANT_RUNNING, TENANT_PREPARING):
        where = f"warm trainer {trainer.name} (pod {pod.name}) on node {node}"
        if tenant_phase == TENANT_RUNNING:
            running["startTime"] = running.get("startTime") or timestamp(now)
            reason, message = "Training", f"training in {where}"
        else:
            reason = "Starting"
            message = (
                f"{where} is opening its checkpoint and dataset (a remote dataset is copied and tokenised "
                "first, a published revision to start from pulled); the other tenants train meanwhile"
            )
        running["conditions"] = merge_conditions(
            current.get("conditions", []), _conditions("False", reason, message, "Running"), generation, now
        )
    return Step(running)


def _left_trainer(step: Step) -> Step:
    """`step` with the warm trainer dropped from its placement: a finished tenant is no longer one.
    (`trainer: None`, not a missing key: the status is written as a merge patch.)"""
    placement = {**(step.status.get("placement") or {}), "trainer": None}
    return replace(step, status={**step.status, "placement": placement})


def _succeeded(
    current: Mapping[str, Any],
    generation: int,
    now: datetime,
    spec: TrainingJobSpec,
    entry: Mapping[str, Any],
    attempts: int,
) -> Step:
    """Published: the trainer's result `entry` (uri, sha256) becomes the output adapter's revision."""
    result = Result(str(entry["uri"]), str(entry["sha256"]))
    done = _with(
        current,
        generation,
        now,
        phase="Succeeded",
        status="True",
        reason="Succeeded",
        message=f"published revision {result.sha256[:12]} to LoRAAdapter {spec.output.adapter_name}",
        attempts=attempts,
    )
    done["adapterRevision"] = result.sha256
    if not done.get("completionTime"):
        done["completionTime"] = timestamp(now)
    events: tuple[Event, ...] = ()
    if spec.schedule:
        try:
            done["nextRunTime"] = timestamp(next_run_time(spec.schedule, now))
        except ValueError as error:
            events = (Event("Warning", "ScheduleInvalid", f"{error}; the job is not rerun"),)
    return Step(done, publish=result, events=events)


def _preempted(
    current: Mapping[str, Any], generation: int, now: datetime, attempts: int, job: JobView
) -> Step:
    node = (current.get("placement") or {}).get("node") or job.node
    message = f"attempt {attempts} was preempted on node {node}; re-queued to resume from its checkpoint"
    step_status = _with(
        current, generation, now, phase="Preempted", status="False", reason="Preempted",
        message=message, attempts=attempts + 1,
    )  # fmt: skip
    step_status["placement"] = None
    return Step(step_status, events=(Event("Warning", "Preempted", message),))


def _crashed(
    current: Mapping[str, Any], generation: int, now: datetime, attempts: int, max_attempts: int,
    exit_code: int | None,
) -> Step:  # fmt: skip
    if attempts + 1 >= max_attempts:
        return _failed(
            current, generation, now, "RetryLimitExceeded",
            f"the trainer crashed (exit code {exit_code}) in {attempts + 1} attempts; see the pod logs",
            attempts=attempts,
        )  # fmt: skip
    message = f"attempt {attempts} crashed (exit code {exit_code}); re-queued"
    crashed = _with(
        current, generation, now, phase="Queued", status="False", reason="Crashed", message=message,
        attempts=attempts + 1,
    )  # fmt: skip
    crashed["placement"] = None
    return Step(crashed, events=(Event("Warning", "Crashed", message),))


def _ready_reason(status: Mapping[str, Any]) -> str | None:
    for c in status.get("conditions", []) or []:
        if c.get("type") == "Ready":
            return str(c.get("reason"))
    return None


def _conditions(
    ready: Literal["True", "False"], reason: str, message: str, phase: str
) -> list[ConditionUpdate]:
    in_flight: Literal["True", "False"] = "True" if phase in ("Queued", "Running", "Preempted") else "False"
    stalled: Literal["True", "False"] = "True" if phase == "Failed" else "False"
    return [
        ConditionUpdate("Ready", ready, reason, message),
        ConditionUpdate("Reconciling", in_flight, reason, message),
        ConditionUpdate("Stalled", stalled, reason, message),
    ]


def _with(
    current: Mapping[str, Any],
    generation: int,
    now: datetime,
    *,
    phase: str,
    status: Literal["True", "False"],
    reason: str,
    message: str,
    attempts: int,
) -> dict[str, Any]:
    planned = dict(current)
    planned["phase"] = phase
    planned["attempts"] = attempts
    planned["observedGeneration"] = generation
    planned["conditions"] = merge_conditions(
        current.get("conditions", []), _conditions(status, reason, message, phase), generation, now
    )
    return planned


def _queued(
    current: Mapping[str, Any], generation: int, now: datetime, attempts: int, reason: str, message: str
) -> dict[str, Any]:
    planned = _with(
        current,
        generation,
        now,
        phase="Queued",
        status="False",
        reason=reason,
        message=message,
        attempts=attempts,
    )
    planned["placement"] = None
    return planned


def _running(
    current: Mapping[str, Any], generation: int, now: datetime, attempts: int, node: str | None
) -> dict[str, Any]:
    before = _ready_reason(current)
    reason = "Training" if before == "Training" else "Starting"
    message = f"attempt {attempts} admitted on node {node}" if node else f"attempt {attempts} admitted"
    if reason == "Training":
        message = next(
            (str(c.get("message")) for c in current.get("conditions", []) if c.get("type") == "Ready"),
            message,
        )
    planned = _with(
        current,
        generation,
        now,
        phase="Running",
        status="False",
        reason=reason,
        message=message,
        attempts=attempts,
    )
    placement = dict(current.get("placement") or {})
    if node:
        placement["node"] = node
    planned["placement"] = placement or None
    planned["checkpointUri"] = current.get("checkpointUri")
    return planned


def _failed(
    current: Mapping[str, Any], generation: int, now: datetime, reason: str, message: str, *, attempts: int
) -> Step:
    planned = _with(
        current,
        generation,
        now,
        phase="Failed",
        status="False",
        reason=reason,
        message=message,
        attempts=attempts,
    )
    planned["placement"] = None
    if not planned.get("completionTime"):
        planned["completionTime"] = timestamp(now)
    before = _ready_reason(current)
    events = () if before == reason else (Event("Warning", reason, message),)
    return Step(planned, events=events)
