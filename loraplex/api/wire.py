"""A model as the API server stores it: the one way specs and statuses are written.

The operator builds each status it writes as its kind's Status model and writes
what `to_wire` makes of it, so the CRD schema (generated from the same models)
and the writers cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from loraplex.api.common import ApiModel

M = TypeVar("M", bound=ApiModel)


def to_wire(model: ApiModel) -> dict[str, Any]:
    """camelCase names, JSON values, and exactly the fields that were set, nested ones included.

    A field left unset is left out (the API server keeps what it has); a field set to None stays
    None, which in a merge patch deletes it.
    """
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


def as_wire(model: type[M], fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` (wire names) checked against `model` and written back as `to_wire` writes them.

    Raises pydantic's ValidationError when `fields` is not a `model`: an unknown field, a wrong type,
    a value out of range.
    """
    return to_wire(model.model_validate(fields))
