"""Makes sure the kopf peering object exists before the operator starts.

kopf's peering is mandatory here (two replicas must never act at once), and it
needs its peering object; creating it at start spares users a manual step and
avoids a chart that would create a custom resource in the same release as its
CRD. Cluster-wide operators meet in a ClusterKopfPeering, namespaced ones in a
KopfPeering in each watched namespace.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.operator.settings import OperatorSettings


def ensure_peering_objects(api: client.ApiClient, settings: OperatorSettings) -> None:
    custom = client.CustomObjectsApi(api)
    metadata = {"name": settings.peering_name}
    if not settings.namespaces:
        body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": metadata}
        _ignore_conflict(
            partial(custom.create_cluster_custom_object, "kopf.dev", "v1", "clusterkopfpeerings", body)
        )
    namespaced = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": metadata}
    for namespace in settings.namespaces:
        create = custom.create_namespaced_custom_object
        _ignore_conflict(partial(create, "kopf.dev", "v1", namespace, "kopfpeerings", namespaced))


def _ignore_conflict(create: Callable[[], object]) -> None:
    """Create, and treat 'already exists' as done: another replica may have been first."""
    try:
        create()
    except ApiException as error:
        if error.status != 409:
            raise
