"""Installs the loraplex CRDs into a cluster and waits until they are served.

Used by the local fleet and the test harness only: the operator itself never
installs or patches CRDs (GitOps tools own them). Where the cluster serves
MutatingAdmissionPolicies it also installs the adapter finalizer policy, as
the chart does (operator/admission_policy.py).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from loraplex.api import GROUP, LORA_ADAPTERS, VERSION, crd, peering
from loraplex.kube import api_client
from loraplex.operator.admission_policy import (
    POLICY_GROUP,
    POLICY_KIND,
    POLICY_VERSIONS,
    UNLOAD_FINALIZER,
    finalizer_policy,
)
from loraplex.operator.apply import Applier

FIELD_MANAGER = "loraplex-dev"  # what the local clusters and the tests install
PROBE_NAMESPACE = "default"  # dry-run creates only: nothing is stored there


def install_crds(kubeconfig: str, timeout: float = 60.0) -> None:
    """Create or replace the loraplex CRDs and kopf's peering CRDs, then wait until served."""
    manifests = [crd.crd(kind) for kind in crd.KINDS]
    manifests += list(peering.PEERING_CRDS)
    with contextlib.closing(api_client(kubeconfig)) as api:
        extensions = client.ApiextensionsV1Api(api)
        for manifest in manifests:
            _create_or_replace(extensions, client.V1CustomResourceDefinition.model_validate(manifest))
        for manifest in manifests:
            _wait_established(extensions, manifest["metadata"]["name"], timeout)
        install_admission_policy(api)


def install_admission_policy(api: client.ApiClient, timeout: float = 60.0) -> str | None:
    """Apply the adapter finalizer policy at the first version the cluster serves it at (v1, then
    v1beta1) and wait until it acts; that version, or None where none serves it."""
    applier = Applier(api, FIELD_MANAGER)
    for version in POLICY_VERSIONS:
        try:
            applier.dynamic.resources.get(api_version=f"{POLICY_GROUP}/{version}", kind=POLICY_KIND)
        except ResourceNotFoundError:
            continue
        applier.apply_all(finalizer_policy(version))
        wait_policy_effective(api, timeout)
        return version
    return None


def wait_policy_effective(api: client.ApiClient, timeout: float) -> None:
    """Wait until a dry-run LoRAAdapter create comes back with the unload finalizer.

    Until then a create can fail outright: the apiserver answers 503 ("Resource kind ... not
    found") while its policy plugin has not yet read the new CRD's schema, which it polls every
    5 s, whatever the policy's failurePolicy says. A binding not yet seen lets creates through
    without the finalizer.
    """
    custom = client.CustomObjectsApi(api)
    probe = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoRAAdapter",
        "metadata": {"name": "loraplex-policy-probe"},
        "spec": {
            "baseModel": "probe",
            "source": {"uri": "file:///probe", "sha256": "0" * 64},
            "rank": 1,
        },
    }
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            created = cast(
                dict[str, Any],
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, PROBE_NAMESPACE, LORA_ADAPTERS, probe, dry_run="All"
                ),
            )
        except ApiException as error:
            if error.status not in (404, 409, 503):
                raise
            last = f"{error.status} {error.reason}"
        else:
            if UNLOAD_FINALIZER in (created["metadata"].get("finalizers") or []):
                return
            last = "created without the finalizer"
        time.sleep(0.5)
    raise TimeoutError(f"adapter finalizer policy not acting after {timeout:.0f}s ({last})")


def _create_or_replace(
    extensions: client.ApiextensionsV1Api, manifest: client.V1CustomResourceDefinition
) -> None:
    assert manifest.metadata is not None
    name = str(manifest.metadata.name)
    try:
        extensions.create_custom_resource_definition(manifest)
    except ApiException as error:
        if error.status != 409:
            raise
        current = extensions.read_custom_resource_definition(name)
        assert current.metadata is not None
        manifest.metadata.resource_version = current.metadata.resource_version
        extensions.replace_custom_resource_definition(name, manifest)


def _wait_established(extensions: client.ApiextensionsV1Api, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = extensions.read_custom_resource_definition(name).status
        conditions = {c.type: c.status for c in (status.conditions or [])} if status else {}
        if conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True":
            return
        time.sleep(0.2)
    raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s")
