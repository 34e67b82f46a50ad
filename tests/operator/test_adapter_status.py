"""A LoRAAdapter checked against its BaseModel: refused with a reason, or waiting for placement."""

from __future__ import annotations

from datetime import UTC, datetime

from loraplex.api.adapter import LoRAAdapterSpec
from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.conditions import condition
from loraplex.operator.adapter_status import check_adapter, plan_adapter_status

NOW = datetime(2026, 11, 22, tzinfo=UTC)
DIGEST = "a" * 64
ADAPTER = LoRAAdapterSpec.model_validate(
    {
        "baseModel": "llama-8b",
        "source": {"uri": "s3://adapters/sql/", "sha256": DIGEST},
        "rank": 32,
        "replicas": 2,
    }
)
BASE_16 = BaseModelSpec.model_validate({"model": {"uri": "/m"}, "engine": {"maxLoraRank": 16}})
BASE_64 = BaseModelSpec.model_validate({"model": {"uri": "/m"}, "engine": {"maxLoraRank": 64}})


def test_missing_base_model_is_named_with_what_to_do() -> None:
    verdict = check_adapter("team-a", ADAPTER, None)
    assert not verdict.placeable
    assert verdict.ready.reason == "UnknownBaseModel"
    assert "team-a/llama-8b does not exist" in verdict.ready.message


def test_rank_above_the_base_models_limit_is_refused() -> None:
    verdict = check_adapter("team-a", ADAPTER, BASE_16)
    assert (verdict.placeable, verdict.ready.reason) == (False, "RankTooHigh")
    assert "spec.rank 32" in verdict.ready.message
    assert "maxLoraRank 16" in verdict.ready.message


def test_an_adapter_on_a_claim_the_workers_do_not_mount_says_which_field_to_set() -> None:
    on_pvc = ADAPTER.model_copy(
        update={"rank": 8, "source": ADAPTER.source.model_copy(update={"uri": "pvc://team/sql/"})}
    )
    verdict = check_adapter("team-a", on_pvc, BASE_16)
    assert (verdict.placeable, verdict.ready.reason) == (False, "VolumeNotMounted")
    assert "add team to the BaseModel's spec.adapterVolumes" in verdict.ready.message
    mounted = BASE_16.model_copy(update={"adapter_volumes": ["team"]})
    assert check_adapter("team-a", on_pvc, mounted).placeable


def test_valid_adapter_waits_for_placement() -> None:
    verdict = check_adapter("team-a", ADAPTER, BASE_64)
    status = plan_adapter_status(verdict, ADAPTER, 1, {}, NOW)
    assert status["phase"] == "Pending"
    assert status["copies"] == "0/2"
    ready = condition(status["conditions"], "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("Unknown", "WaitingForPlacement")


def test_invalid_adapter_is_failed_and_stalled_and_recovers_when_fixed() -> None:
    failed = plan_adapter_status(check_adapter("ns", ADAPTER, BASE_16), ADAPTER, 1, {}, NOW)
    assert failed["phase"] == "Failed"
    stalled = condition(failed["conditions"], "Stalled")
    assert stalled is not None
    assert stalled["status"] == "True"
    fixed = plan_adapter_status(check_adapter("ns", ADAPTER, BASE_64), ADAPTER, 2, failed, NOW)
    assert fixed["phase"] == "Pending"
    assert fixed["observedGeneration"] == 2
    unstalled = condition(fixed["conditions"], "Stalled")
    assert unstalled is not None
    assert unstalled["status"] == "False"
