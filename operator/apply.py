"""Applies planned objects to the cluster: server-side apply, skipped when nothing changed.

Each planned object carries a content hash (see fleet.py); an object whose
live hash matches is not written, so a reconcile that finds the world as
planned makes no API writes at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

from loraplex.api.labels import HASH_ANNOTATION
from loraplex.operator import metrics
from loraplex.operator.fleet import Manifest


class Applier:
    """Server-side apply with one field manager; resource discovery is done once."""

    def __init__(self, api: client.ApiClient, field_manager: str) -> None:
        self.dynamic = DynamicClient(api)  # type: ignore[no-untyped-call]
        self.field_manager = field_manager

    def apply_all(self, manifests: Iterable[Manifest]) -> int:
        """Apply each manifest whose live copy differs; return how many were written."""
        return sum(self.apply(manifest) for manifest in manifests)

    def apply(self, manifest: Manifest) -> bool:
        resource = self._resource(manifest)
        meta = manifest["metadata"]
        live = self._get(resource, meta["name"], meta.get("namespace"))
        wanted = meta.get("annotations", {}).get(HASH_ANNOTATION)
        if live is not None and wanted and _annotations(live).get(HASH_ANNOTATION) == wanted:
            metrics.APPLY_SKIPPED.labels(manifest["kind"]).inc()
            return False
        resource.server_side_apply(
            body=manifest, name=meta["name"], namespace=meta.get("namespace"),
            field_manager=self.field_manager, force_conflicts=True,
        )  # fmt: skip
        metrics.API_WRITES.labels(manifest["kind"], "apply").inc()
        return True

    def create_if_missing(self, manifest: Manifest) -> bool:
        """Create an object once and never touch it again (the generated API key secret).

        Create-or-conflict instead of get-then-create: the operator needs only the
        `create` verb on Secrets, never `get`.
        """
        resource = self._resource(manifest)
        try:
            resource.create(body=manifest, namespace=manifest["metadata"].get("namespace"))
        except ConflictError:
            return False
        metrics.API_WRITES.labels(manifest["kind"], "create").inc()
        return True

    def delete(self, api_version: str, kind: str, name: str, namespace: str) -> bool:
        """Delete one object; an object already gone counts as done."""
        resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
        try:
            resource.delete(name=name, namespace=namespace)
        except NotFoundError:
            return False
        metrics.API_WRITES.labels(kind, "delete").inc()
        return True

    def _resource(self, manifest: Manifest) -> Any:
        return self.dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])

    @staticmethod
    def _get(resource: Any, name: str, namespace: str | None) -> Any | None:
        try:
            return resource.get(name=name, namespace=namespace)
        except NotFoundError:
            return None


def _annotations(live: Any) -> dict[str, str]:
    annotations = live.metadata.annotations
    return dict(annotations) if annotations else {}
