"""A typed way to get a kubernetes ApiClient: from a kubeconfig, else in-cluster."""

from __future__ import annotations

from typing import cast

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient for the kubeconfig's current context (default: $KUBECONFIG or
    ~/.kube/config), or the pod's service account when there is none; close it when done."""
    try:
        return cast(client.ApiClient, config.new_client_from_config(config_file=kubeconfig))  # type: ignore[no-untyped-call]
    except ConfigException:
        if kubeconfig is not None:
            raise
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)
