"""Creating loraplex objects from tests and benchmarks: one call, the right apiVersion and kind."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from loraplex.api import GROUP, VERSION


def create_object(
    api: client.ApiClient, namespace: str, plural: str, kind: str, name: str, spec: Any
) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
