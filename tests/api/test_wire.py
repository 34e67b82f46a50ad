"""to_wire and as_wire: what a status model writes, and nothing it was not told to."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from loraplex.api.adapter import LoRAAdapterStatus
from loraplex.api.basemodel import BaseModelStatus, SlotUsage
from loraplex.api.trainingjob import TrainingJobStatus
from loraplex.api.wire import as_wire, to_wire


def test_camel_case_json_values_and_only_the_fields_set() -> None:
    status = BaseModelStatus(observed_generation=2, slots=SlotUsage(gpu_total=4), worker_selector="a=b")
    # Defaults (conditions=[], slots' other counts) are not written: the API server keeps what it has.
    assert to_wire(status) == {"observedGeneration": 2, "slots": {"gpuTotal": 4}, "workerSelector": "a=b"}


def test_a_field_set_to_none_stays_to_delete_it_in_a_merge_patch() -> None:
    written = as_wire(TrainingJobStatus, {"phase": "Queued", "placement": None, "progress": {"loss": 0.5}})
    assert written == {"phase": "Queued", "placement": None, "progress": {"loss": 0.5}}


def test_times_are_written_as_the_api_server_writes_them() -> None:
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Placed",
        "message": "",
        "lastTransitionTime": "2026-11-22T10:00:00Z",
        "observedGeneration": 1,
    }
    assert as_wire(LoRAAdapterStatus, {"conditions": [condition]}) == {"conditions": [condition]}
    started = TrainingJobStatus(start_time=datetime(2026, 11, 22, 10, tzinfo=UTC))
    assert to_wire(started) == {"startTime": "2026-11-22T10:00:00Z"}


@pytest.mark.parametrize(
    "fields",
    [
        {"readyWorkers": 1},  # a BaseModel's field on an adapter
        {"phase": "Running"},  # a TrainingJob's phase
        {"readyReplicas": -1},
        {"placements": [{"worker": "w-0", "tier": "GPU", "extra": 1}]},
    ],
)
def test_what_the_schema_refuses_is_refused_before_it_is_written(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        as_wire(LoRAAdapterStatus, fields)
