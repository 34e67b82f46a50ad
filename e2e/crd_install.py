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

from loraplex.api import crd, peering
from loraplex.kube import api_client
from loraplex.operator.admission_policy import POLICY_GROUP, POLICY_VERSIONS, finalizer_policy


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
    """Create or replace the adapter finalizer policy at the first version the cluster serves it
    at (v1, then v1beta1); that version, or None where none serves it."""
    version = next((v for v in POLICY_VERSIONS if _serves_policies(api, v)), None)
    if version is not None:
        custom = client.CustomObjectsApi(api)
        for manifest in finalizer_policy(version):
            _create_or_replace_cluster_object(custom, version, manifest)
    return version


def _serves_policies(api: client.ApiClient, version: str) -> bool:
    """Whether discovery lists MutatingAdmissionPolicy at admissionregistration.k8s.io/<version>."""
    try:
        if version == "v1":
            listed = client.AdmissionregistrationV1Api(api).get_api_resources()
        else:
            listed = client.AdmissionregistrationV1beta1Api(api).get_api_resources()
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return any(r.kind == "MutatingAdmissionPolicy" for r in listed.resources or [])


def _create_or_replace_cluster_object(custom: client.CustomObjectsApi, version: str, manifest: Any) -> None:
    plural = {
        "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
        "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
    }[manifest["kind"]]
    name = manifest["metadata"]["name"]
    try:
        custom.create_cluster_custom_object(POLICY_GROUP, version, plural, manifest)
    except ApiException as error:
        if error.status != 409:
            raise
        current = cast(dict[str, Any], custom.get_cluster_custom_object(POLICY_GROUP, version, plural, name))
        manifest["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        custom.replace_cluster_custom_object(POLICY_GROUP, version, plural, name, manifest)


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
