"""Every field of every generated CRD has a description, so `kubectl explain` documents it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from loraplex.api import crd


def _properties(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every named property under `schema`, through list items and map values, with its path."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from _properties(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _properties(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _properties(schema["additionalProperties"], f"{path}{{}}")


def _undescribed(kind: crd.Kind) -> list[str]:
    schema = crd.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # The apiserver refuses a CRD whose metadata schema says more than its type: it documents it itself.
    exempt = {f"{kind.kind}.metadata"}
    return [
        path
        for path, sub in _properties(schema, kind.kind)
        if path not in exempt and not str(sub.get("description", "")).strip()
    ]


@pytest.mark.parametrize("kind", crd.KINDS, ids=lambda k: k.kind)
def test_every_crd_field_has_a_description(kind: crd.Kind) -> None:
    missing = _undescribed(kind)
    assert not missing, (
        "fields without a description (give each a Field(description=...) in loraplex/api, "
        f"then run `loraplex crds generate`): {missing}"
    )


def test_the_walk_reaches_list_items_and_nested_objects() -> None:
    """The check sees the deep fields kubectl explain shows, not only the top level."""
    paths = {
        path
        for kind in crd.KINDS
        for path, _ in _properties(
            crd.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"], kind.kind
        )
    }
    assert "BaseModel.spec.tolerations[].tolerationSeconds" in paths
    assert "TrainingJob.status.conditions[].lastTransitionTime" in paths
    assert "TrainingJob.spec.lora.rank" in paths
    assert "WorkerPlacement.status.failures[].reason" in paths
