"""Shared fixtures: the real local control plane, started once per test session.

Tests marked `cluster` get a kube-apiserver, etcd, controller-manager,
scheduler and KWOK built from pinned sources (see e2e/binaries.py), with the
loraplex CRDs installed and simulated GPU nodes. Set LORAPLEX_KEEP_CLUSTER=1 to
leave it running after the session (a later session then reuses it).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.crd_install import install_crds

TEST_CLUSTER = os.environ.get("LORAPLEX_TEST_CLUSTER", "loraplex-test")
GPU_NODES = 4


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(TEST_CLUSTER)
    cluster.up(nodes=GPU_NODES)
    install_crds(str(cluster.kubeconfig))
    yield cluster
    if not os.environ.get("LORAPLEX_KEEP_CLUSTER"):
        cluster.down()


@pytest.fixture(scope="session")
def kube(local_cluster: LocalCluster) -> Iterator[Any]:
    """A kubernetes.client.ApiClient for the test cluster."""
    with contextlib.closing(local_cluster.api_client()) as api:
        yield api


@pytest.fixture
def namespace(kube: Any) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(kube)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
