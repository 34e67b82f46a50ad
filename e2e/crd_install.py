"""Installs the loraplex CRDs into a cluster and waits until they are served.

Used by the local fleet and the test harness only: the operator itself never
installs or patches CRDs (GitOps tools own them). Where the cluster serves
MutatingAdmissionPolicies it also installs the adapter finalizer policy, as
the chart does (operator/admission_policy.py).
"""

from __future__ import annotations

import contextlib
import time

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from loraplex.api import crd, peering
from loraplex.kube import api_client
from loraplex.operator.admission_policy import POLICY_GROUP, POLICY_KIND, POLICY_VERSIONS, finalizer_policy
from loraplex.operator.apply import Applier

FIELD_MANAGER = "loraplex-dev"  # what the local clusters and the tests install


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


def install_admission_policy(api: client.ApiClient) -> str | None:
    """Apply the adapter finalizer policy at the first version the cluster serves it at (v1, then
    v1beta1); that version, or None where none serves it."""
    applier = Applier(api, FIELD_MANAGER)
    for version in POLICY_VERSIONS:
        try:
            applier.dynamic.resources.get(api_version=f"{POLICY_GROUP}/{version}", kind=POLICY_KIND)
        except ResourceNotFoundError:
            continue
        applier.apply_all(finalizer_policy(version))
        return version
    return None


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
