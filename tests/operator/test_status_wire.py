"""Every status the operator writes is its kind's Status model on the wire, and round-trips.

The builders construct BaseModelStatus, LoRAAdapterStatus and TrainingJobStatus and
write `to_wire` of them, so the CRD schema (generated from the same models) and the
writers cannot drift apart: what each builder returns validates against the model and
dumps back to the same dict, a None (a merge patch's delete) included.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.api.adapter import LoRAAdapterSpec, LoRAAdapterStatus
from loraplex.api.basemodel import BaseModelSpec, BaseModelStatus
from loraplex.api.common import ApiModel
from loraplex.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from loraplex.api.wire import as_wire
from loraplex.operator.adapter_residency import (
    AdapterReports,
    FleetSize,
    Resident,
    plan_placed_adapter_status,
)
from loraplex.operator.adapter_status import check_adapter, plan_adapter_status
from loraplex.operator.fleet_status import FleetObservation, FleetPod, plan_base_model_status
from loraplex.operator.training_roots import parse_roots
from loraplex.operator.training_status import JobView, PodView, output_refused, plan_training

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DIGEST, OTHER = "1" * 64, "2" * 64
BASE = BaseModelSpec.model_validate(
    {
        "model": {"uri": "/m"},
        "replicas": {"min": 2, "max": 5},
        "engine": {"maxLoraRank": 16},
        "adapterVolumes": ["c"],
    }
)


def round_trips(model: type[ApiModel], written: dict[str, Any]) -> None:
    assert as_wire(model, written) == written


# BaseModel

pods = st.lists(
    st.builds(
        FleetPod,
        st.sampled_from(["w-0", "w-1", "w-2"]),
        st.booleans(),
        st.sampled_from(
            [None, "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.", "node(s) had taints"]
        ),
    ),
    max_size=3,
).map(tuple)
observations = st.builds(
    FleetObservation,
    statefulset_found=st.booleans(),
    replicas=st.integers(0, 5),
    observed_generation=st.integers(0, 2),
    generation=st.integers(0, 2),
    ready_replicas=st.integers(0, 5),
    updated_replicas=st.integers(0, 5),
    current_revision=st.sampled_from([None, "r1", "r2"]),
    update_revision=st.sampled_from([None, "r1", "r2"]),
    applied_hash=st.sampled_from([None, "h1"]),
    pods=pods,
    router_pods=pods,
    gpu_used=st.integers(0, 20),
    cpu_used=st.integers(0, 20),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(observations, min_size=1, max_size=4), st.sampled_from(["", "app=worker"]))
def test_base_model_statuses_are_base_model_status_models(
    seen: list[FleetObservation], selector: str
) -> None:
    status: dict[str, Any] = {}
    for minutes, observed in enumerate(seen):
        status = plan_base_model_status(
            BASE, 1, observed, status, NOW + timedelta(minutes=minutes), selector, "h1"
        )
        round_trips(BaseModelStatus, status)
        assert ("workerSelector" in status) == bool(selector)  # unset is not written


def test_a_base_model_status_on_the_wire() -> None:
    observed = FleetObservation(
        True,
        2,
        1,
        1,
        2,
        2,
        "r1",
        "r1",
        "h1",
        (FleetPod("w-0", True), FleetPod("w-1", True)),
        3,
        1,
        router_pods=(FleetPod("r-0", True),),
    )
    assert plan_base_model_status(BASE, 1, observed, {}, NOW, "app=worker", "h1") == {
        "observedGeneration": 1,
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": "2026-11-22T12:00:00Z",
             "observedGeneration": 1}
            for t, s, r, m in [
                ("Degraded", "False", "AsExpected", ""),
                ("Progressing", "False", "AsExpected", ""),
                ("Ready", "True", "WorkersReady", "2 of 2 workers ready"),
                ("Reconciling", "False", "AsExpected", ""),
                ("Stalled", "False", "AsExpected", ""),
            ]
        ],
        "desiredWorkers": 2,
        "readyWorkers": 2,
        "workers": "2/2",
        "slots": {"gpuTotal": 8, "gpuUsed": 3, "cpuTotal": 32, "cpuUsed": 4},
        "slotsSummary": "3/8",
        "workerSelector": "app=worker",
    }  # fmt: skip


# LoRAAdapter

adapters = st.builds(
    lambda uri, rank, replicas: LoRAAdapterSpec.model_validate(
        {"baseModel": "b", "source": {"uri": uri, "sha256": DIGEST}, "rank": rank, "replicas": replicas}
    ),
    st.sampled_from(["pvc://c/sql", "pvc://d/sql", "s3://adapters/sql/"]),
    st.sampled_from([8, 16, 32]),
    st.integers(0, 3),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(adapters, st.booleans()), min_size=1, max_size=4))
def test_unplaced_adapter_statuses_are_lora_adapter_status_models(
    seen: list[tuple[LoRAAdapterSpec, bool]],
) -> None:
    status: dict[str, Any] = {}
    for generation, (adapter, base_exists) in enumerate(seen, start=1):
        verdict = check_adapter("ns", adapter, BASE if base_exists else None)
        status = plan_adapter_status(
            verdict, adapter, generation, status, NOW + timedelta(minutes=generation)
        )
        round_trips(LoRAAdapterStatus, status)
        assert "placements" not in status  # the placement loop's to write


workers = st.sampled_from(["w-0", "w-1", "w-2", "w-3"])
reports = st.builds(
    AdapterReports,
    st.dictionaries(
        workers,
        st.builds(
            Resident,
            st.sampled_from(["GPU", "CPU", "Disk"]),
            st.sampled_from([DIGEST, OTHER, None]),
            st.sampled_from([None, 0.5, 3.0]),
            st.booleans(),
        ),
    ),
    st.dictionaries(
        workers, st.tuples(st.sampled_from(["LoadFailed", "DigestMismatch"]), st.sampled_from(["", "boom"]))
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(adapters, st.lists(workers, unique=True), reports, st.integers(0, 4), st.integers(0, 4)),
        min_size=1,
        max_size=4,
    )
)
def test_placed_adapter_statuses_are_lora_adapter_status_models(
    seen: list[tuple[LoRAAdapterSpec, list[str], AdapterReports, int, int]],
) -> None:
    status: dict[str, Any] = {}
    for minutes, (adapter, planned, reported, ready, target) in enumerate(seen):
        now = NOW + timedelta(minutes=minutes)
        status = plan_placed_adapter_status(
            adapter, 1, sorted(planned), reported, FleetSize(ready, target), status, now
        )
        round_trips(LoRAAdapterStatus, status)


def test_a_placed_adapter_status_on_the_wire() -> None:
    adapter = LoRAAdapterSpec.model_validate(
        {
            "baseModel": "b",
            "source": {"uri": "s3://adapters/sql/", "sha256": DIGEST},
            "rank": 8,
            "replicas": 2,
        }
    )
    held = AdapterReports({"w-1": Resident("CPU", DIGEST), "w-0": Resident("GPU", DIGEST, 1.5)})
    assert plan_placed_adapter_status(adapter, 3, ["w-0", "w-1"], held, FleetSize(2, 2), {}, NOW) == {
        "observedGeneration": 3,
        "phase": "Ready",
        "placements": [{"worker": "w-0", "tier": "GPU"}, {"worker": "w-1", "tier": "CPU"}],
        "readyReplicas": 2,
        "copies": "2/2",
        "revision": DIGEST,
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": "2026-11-22T12:00:00Z",
             "observedGeneration": 3}
            for t, s, r, m in [
                ("Ready", "True", "Placed", "2 of 2 copies loaded"),
                ("Reconciling", "False", "Placed", ""),
                ("Stalled", "False", "AsExpected", ""),
            ]
        ],
        "lastLoadLatencySeconds": 1.5,
    }  # fmt: skip


# TrainingJob

RESULT = json.dumps(
    {"exitCode": 0, "adapters": [{"name": "tj", "uri": f"file:///store/{DIGEST}", "sha256": DIGEST}]}
)
FAILED = json.dumps(
    {"exitCode": 3, "adapters": [{"name": "tj", "reason": "NonFiniteLoss", "message": "loss is nan"}]}
)
trainer_pods = st.lists(
    st.builds(
        PodView,
        st.sampled_from(["tj-a0-x", "tj-a0-y"]),
        st.sampled_from([None, "n1"]),
        st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]),
        st.booleans(),
        st.sampled_from([None, 0, 1, 2, 3, 75]),
        st.sampled_from([None, RESULT, FAILED, "not json"]),
    ),
    max_size=2,
).map(tuple)
job_views = st.none() | st.builds(
    JobView,
    st.just("tj-a0"),
    st.sampled_from([None, "n1"]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.just(""),
    st.sampled_from(["", "DisruptionTarget"]),
    trainer_pods,
)
training_specs = st.builds(
    lambda schedule, rank, queue: TrainingJobSpec.model_validate(
        {
            "baseModel": "b",
            "dataset": {"uri": "file:///data/x.jsonl"},
            "output": {"adapterName": "sql"},
            "training": {"steps": 10},
            "lora": {"rank": rank},
            **({"schedule": schedule} if schedule else {}),
            **({"queueName": "q"} if queue else {}),
        }
    ),
    st.sampled_from([None, "@hourly"]),
    st.sampled_from([8, 32]),
    st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(
    training_specs,
    st.lists(
        st.tuples(
            job_views, st.booleans(), st.sampled_from([None, "n2"]), st.sampled_from([1, 2]), st.booleans()
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_training_statuses_are_training_job_status_models_nones_included(
    spec: TrainingJobSpec, passes: list[tuple[JobView | None, bool, str | None, int, bool]]
) -> None:
    stored: dict[str, Any] = {}  # what the API server keeps after each status merge patch
    for minutes, (job, base_exists, node, generation, refused) in enumerate(passes):
        now = NOW + timedelta(minutes=47 * minutes)
        step = plan_training(
            namespace="ns", name="tj", generation=generation, spec=spec, base=BASE if base_exists else None,
            status=stored, job=job, admitted_node=node, max_attempts=3, now=now,
            dataset_roots=parse_roots(["file:///data"]),
        )  # fmt: skip
        if refused:
            step = output_refused(step.status, None, now, "OutputAdapterOfAnotherBaseModel", "not ours")
        round_trips(TrainingJobStatus, step.status)
        stored = {k: v for k, v in {**stored, **step.status}.items() if v is not None}
        round_trips(TrainingJobStatus, stored)
