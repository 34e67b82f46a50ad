"""The unload finalizer: set at creation by the MutatingAdmissionPolicy, or by the operator without one."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.e2e.crd_install import install_admission_policy
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.waiting import wait_until
from loraplex.operator.admission_policy import POLICY_GROUP, POLICY_NAME, UNLOAD_FINALIZER

pytestmark = pytest.mark.cluster


def adapter(name: str, finalizers: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoRAAdapter",
        "metadata": {"name": name},
        "spec": {
            "baseModel": "tiny",
            "source": {"uri": f"s3://adapters/{name}/", "sha256": "0" * 64},
            "rank": 8,
        },
    }
    if finalizers:
        body["metadata"]["finalizers"] = finalizers
    return body


def drop_finalizers(kube: Any, namespace: str, *names: str) -> None:
    """Let the namespace go: no operator runs in these tests to release the adapters."""
    custom = client.CustomObjectsApi(kube)
    for name in names:
        with contextlib.suppress(client.exceptions.ApiException):
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "loraadapters", name, {"metadata": {"finalizers": None}}
            )


@contextlib.contextmanager
def policy_unbound(kube: Any) -> Iterator[None]:
    """The policy's binding removed for the block (as on a cluster that serves no policy API)."""
    version = install_admission_policy(kube)
    assert version is not None
    custom = client.CustomObjectsApi(kube)
    plural = "mutatingadmissionpolicybindings"
    custom.delete_cluster_custom_object(POLICY_GROUP, version, plural, POLICY_NAME)
    try:
        yield
    finally:
        install_admission_policy(kube)


def test_a_new_adapter_carries_the_unload_finalizer_from_its_create(kube: Any, namespace: str) -> None:
    custom = client.CustomObjectsApi(kube)
    plain = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", adapter("a"))
    own = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "loraadapters", adapter("b", ["example.com/keep"])
    )
    try:
        assert plain["metadata"]["finalizers"] == [UNLOAD_FINALIZER]
        assert own["metadata"]["finalizers"] == ["example.com/keep", UNLOAD_FINALIZER]
    finally:
        drop_finalizers(kube, namespace, "a", "b")


def test_the_operator_adds_the_finalizer_where_no_policy_set_it(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    custom = client.CustomObjectsApi(kube)
    names = (f"late-{n}" for n in itertools.count())
    with policy_unbound(kube):
        created = wait_until(
            lambda: _created_without_policy(custom, namespace, next(names)),
            30,
            "a create the unbound policy leaves alone",
        )

    def finalizers() -> list[str] | None:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", created)
        found: list[str] = body["metadata"].get("finalizers") or []
        return found or None

    assert wait_until(finalizers, 30, "the operator's finalizer") == [UNLOAD_FINALIZER]


def _created_without_policy(custom: client.CustomObjectsApi, namespace: str, name: str) -> str | None:
    """Create adapter `name`; the name if it was created without the finalizer (the binding's removal
    reaches the apiserver's policy cache within a moment), else None after deleting it."""
    body = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", adapter(name))
    if not body["metadata"].get("finalizers"):
        return name
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "loraadapters", name, {"metadata": {"finalizers": None}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", name)
    return None
