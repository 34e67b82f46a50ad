"""A kubeconfig that acts as a ServiceAccount: to run the operator with exactly the chart's RBAC."""

from __future__ import annotations

import contextlib
from pathlib import Path

import yaml
from kubernetes import client

from loraplex.kube import api_client


def service_account_kubeconfig(admin_kubeconfig: Path, namespace: str, account: str, out: Path) -> Path:
    """Write a kubeconfig holding a fresh token of `namespace/account` for the same apiserver."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    with contextlib.closing(api_client(str(admin_kubeconfig))) as api:
        request = client.AuthenticationV1TokenRequest.model_validate({"spec": {"expirationSeconds": 3600}})
        token = client.CoreV1Api(api).create_namespaced_service_account_token(account, namespace, request)
    assert token.status is not None
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token.status.token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": account, "namespace": namespace}}],
        "current-context": "c",
    }
    out.write_text(yaml.safe_dump(config))
    return out
