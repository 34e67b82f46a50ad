"""The shipped Argo CD health.lua scripts and kstatus (Flux) say what docs/operator.md promises.

The fixtures are objects the real operator wrote (tests/gitops/test_health_of_real_objects.py makes
them and checks the same on live objects); each is first checked to be what its name claims, and a
valid object of its kind.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from loraplex.api.adapter import LoRAAdapterSpec, LoRAAdapterStatus
from loraplex.api.basemodel import BaseModelSpec, BaseModelStatus
from loraplex.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from tests.gitops.health import (
    ARGOCD,
    KINDS,
    Case,
    all_cases,
    argo_health,
    argo_health_in_gopher_lua,
    kstatus,
)

MODELS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "BaseModel": (BaseModelSpec, BaseModelStatus),
    "LoRAAdapter": (LoRAAdapterSpec, LoRAAdapterStatus),
    "TrainingJob": (TrainingJobSpec, TrainingJobStatus),
}
CASES = all_cases()


def flag(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj["status"].get("conditions", []) if c["type"] == type_), {})


# What each case's name claims of its object, checked before any tool is asked about it.
CLAIMS = {
    "ready": lambda obj: flag(obj, "Ready").get("status") == "True",
    "succeeded-scheduled": lambda obj: (
        obj["status"]["phase"] == "Succeeded" and "nextRunTime" in obj["status"]
    ),
    "reconciling": lambda obj: flag(obj, "Reconciling").get("status") == "True",
    "queued": lambda obj: obj["status"]["phase"] == "Queued" and flag(obj, "Reconciling")["status"] == "True",
    "running": lambda obj: obj["status"]["phase"] == "Running",
    "suspended": lambda obj: flag(obj, "Ready").get("reason") == "WaitingForKueue",
    "stalled": lambda obj: flag(obj, "Stalled").get("status") == "True",
    "failed": lambda obj: obj["status"]["phase"] == "Failed" and flag(obj, "Stalled")["status"] == "True",
    "short-of-capacity": lambda obj: (
        flag(obj, "Ready").get("status") == "False"
        and flag(obj, "Reconciling").get("status") == "False"
        and flag(obj, "Stalled").get("status") == "False"
    ),
    "stale-generation": lambda obj: obj["metadata"]["generation"] > obj["status"]["observedGeneration"],
}


def test_every_kind_has_the_cases_a_gitops_tool_meets() -> None:
    names = {kind: {case.name for case in CASES if case.kind == kind} for kind in KINDS}
    for kind in ("BaseModel", "LoRAAdapter"):
        assert {"ready", "reconciling", "stalled", "stale-generation"} <= names[kind]
    assert {"queued", "running", "suspended", "succeeded-scheduled", "failed", "stale-generation"} <= names[
        "TrainingJob"
    ]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kind}-{c.name}")
def test_fixture_is_a_valid_object_in_the_state_its_name_claims(case: Case) -> None:
    obj = case.fixture()
    assert (obj["apiVersion"], obj["kind"]) == ("loraplex.dev/v1alpha1", case.kind)
    spec_model, status_model = MODELS[case.kind]
    spec_model.model_validate(obj["spec"])
    status_model.model_validate(obj["status"])
    assert {c["type"] for c in obj["status"]["conditions"]} >= {"Ready", "Reconciling", "Stalled"}
    assert CLAIMS[case.name](obj), f"{case.path} is not what {case.name!r} says"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kind}-{c.name}")
def test_argo_cd_health_lua_gives_the_documented_health(case: Case) -> None:
    health = argo_health(case.fixture())
    assert health["status"] == case.status, health
    if case.message is not None:
        assert health["message"] == case.message
    assert health["message"]  # the Argo CD UI shows why


@pytest.mark.parametrize("kind", KINDS)
def test_argo_cds_own_interpreter_gives_the_same_health(kind: str) -> None:
    """gopher-lua with only the libraries Argo CD opens: no string library, no os, no io."""
    cases = [case for case in CASES if case.kind == kind]
    fixtures = [case.fixture() for case in cases]
    assert argo_health_in_gopher_lua(kind, fixtures) == [argo_health(fixture) for fixture in fixtures]
    assert [health["status"] for health in argo_health_in_gopher_lua(kind, fixtures)] == [
        case.status for case in cases
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_argo_cd_health_of_an_object_the_operator_has_not_seen_is_progressing(kind: str) -> None:
    obj = next(case for case in CASES if case.kind == kind).fixture()
    del obj["status"]
    assert argo_health(obj) == {
        "status": "Progressing",
        "message": "Waiting for the operator to report status",
    }


def test_argo_cd_health_messages_say_why() -> None:
    by_case = {(case.kind, case.name): argo_health(case.fixture())["message"] for case in CASES}
    assert by_case["BaseModel", "stalled"].startswith("InsufficientGPU: ")
    assert by_case["TrainingJob", "failed"].startswith("UnknownBaseModel: ")
    assert "; next run at " in by_case["TrainingJob", "succeeded-scheduled"]
    assert by_case["LoRAAdapter", "stale-generation"] == "Waiting for the operator to observe generation 2"


def test_kstatus_computes_the_documented_status() -> None:
    computed = kstatus([case.fixture() for case in CASES])
    said = {(case.kind, case.name): result["status"] for case, result in zip(CASES, computed, strict=True)}
    assert said == {(case.kind, case.name): case.kstatus for case in CASES}


def test_argocd_cm_snippet_carries_each_health_lua_verbatim() -> None:
    snippet = yaml.safe_load((ARGOCD.parent / "argocd-cm.yaml").read_text())
    assert (snippet["kind"], snippet["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert snippet["data"] == {
        f"resource.customizations.health.loraplex.dev_{kind}": (ARGOCD / kind / "health.lua").read_text()
        for kind in KINDS
    }
