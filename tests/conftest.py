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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.crd_install import install_crds
from loraplex.e2e.s3_server import S3Server
from loraplex.e2e.tiny_model import AdapterFiles, lora_adapter, tiny_llama
from loraplex.e2e.worker_processes import VllmProcess

# Property tests explore the same examples on every run (CI must not flip on a new random draw);
# HYPOTHESIS_PROFILE=explore searches afresh each run, for hunting bugs by hand. No deadline: an
# example's time is not what a property test checks, and a loaded 2-core machine makes it flip.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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


# An S3-compatible store: moto's S3 server on loopback, one per session, started only when asked.


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Any]:
    """Makes a bucket (if missing) and returns a minio client; AWS_* point loraplex's clients there."""
    from minio import Minio

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    client = Minio(
        f"127.0.0.1:{s3_server.port}",
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        secure=False,
    )

    def make(name: str) -> Any:
        if not client.bucket_exists(name):
            client.make_bucket(name)
        return client

    return make


# The real vLLM engine on its CPU backend: one server per session (30-60 s to
# start on 2 cores) serving the tiny Llama, started only when a test asks.


@pytest.fixture(scope="session")
def base_model() -> Path:
    return tiny_llama()


@pytest.fixture(scope="session")
def adapters(base_model: Path) -> dict[str, AdapterFiles]:
    return {f"a{i}": lora_adapter(f"a{i}", seed=i + 1, base=base_model) for i in range(5)}


@pytest.fixture(scope="session")
def vllm(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmProcess]:
    process = VllmProcess(
        base_model, tmp_path_factory.mktemp("vllm") / "vllm.log", max_loras=2, max_cpu_loras=4
    )
    try:
        yield process.start()
    finally:
        process.stop()
