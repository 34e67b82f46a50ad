"""A typed way to get a kubernetes ApiClient for a kubeconfig file."""

from __future__ import annotations

from typing import cast

from kubernetes import client, config


def api_client(kubeconfig: str) -> client.ApiClient:
    """An ApiClient for the kubeconfig's current context; close it when done."""
    return cast(client.ApiClient, config.new_client_from_config(config_file=kubeconfig))  # type: ignore[no-untyped-call]
