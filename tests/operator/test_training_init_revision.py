"""Which published revision a run with `spec.initFrom: published` starts from."""

from __future__ import annotations

from typing import Any

from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.training_status import init_revision

ROOT = "pvc://store/loraplex/adapters/team/sql"
SHA, OLDER = "ab" * 32, "cd" * 32


def spec(init_from: str) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "baseModel": "llama",
            "dataset": {"uri": "pvc://datasets/sql.jsonl"},
            "output": {"adapterName": "sql"},
            "training": {"steps": 10},
            "initFrom": init_from,
        }
    )


def adapter(uri: str, sha256: str = SHA) -> dict[str, Any]:
    return {"spec": {"baseModel": "llama", "source": {"uri": uri, "sha256": sha256}}}


def test_scratch_never_starts_from_a_revision() -> None:
    assert init_revision(spec("scratch"), {}, adapter(f"{ROOT}/{SHA}"), ROOT) == (None, None)
    assert (
        TrainingJobSpec.model_validate(
            {
                "baseModel": "l",
                "dataset": {"uri": "pvc://d/x"},
                "output": {"adapterName": "a"},
                "training": {"steps": 1},
            }
        ).init_from
        == "scratch"
    )  # the default


def test_published_starts_from_the_adapters_current_revision_in_the_store() -> None:
    assert init_revision(spec("published"), {}, adapter(f"{ROOT}/{SHA}/"), ROOT) == (SHA, None)


def test_the_first_run_with_no_adapter_yet_starts_from_scratch() -> None:
    assert init_revision(spec("published"), {}, None, ROOT) == (None, None)


def test_a_run_keeps_the_revision_it_started_from_across_attempts() -> None:
    status = {"initRevision": OLDER}
    assert init_revision(spec("published"), status, adapter(f"{ROOT}/{SHA}"), ROOT) == (OLDER, None)


def test_a_revision_outside_the_store_is_refused_naming_the_fix() -> None:
    revision, problem = init_revision(
        spec("published"), {}, adapter("https://example.com/sql.tar", SHA), ROOT
    )
    assert revision is None
    assert problem is not None
    reason, message = problem
    assert reason == "InitRevisionOutsideStore"
    assert "spec.initFrom: scratch" in message
    assert "https://example.com/sql.tar" in message
    # Another adapter's folder in the same store is not this adapter's revision either.
    elsewhere = adapter(f"pvc://store/loraplex/adapters/team/other/{SHA}")
    assert init_revision(spec("published"), {}, elsewhere, ROOT)[1] is not None
