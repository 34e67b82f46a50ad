"""A real local Kubernetes control plane for tests and for the local fleet.

kwokctl's `binary` runtime starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the KWOK controller as local processes, all pointed at the
pinned binaries that `binaries.py` builds (kwokctl downloads nothing when each
binary is given). KWOK then plays kubelet for simulated GPU nodes, so pods are
really scheduled and reach Running. Everything lives under
`$LORAPLEX_CACHE/kwok/clusters/<name>/`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.e2e.binaries import Binaries, cache_root, ensure_binaries
from loraplex.e2e.gpu_nodes import GpuNodeShape, gpu_node
from loraplex.e2e.node_config import API_SERVICE_IP, NODE_IP, apiserver_patches
from loraplex.kube import api_client

Log = Callable[[str], None]


# Every component listens on loopback only: etcd has no authentication in this setup. (With a real
# node, kube-apiserver alone also listens on the pod bridge: node_config.apiserver_patches.)
# MutatingAdmissionPolicy is beta in Kubernetes 1.34 (off by default): on here so the adapter
# finalizer is set at creation, as on clusters from 1.36 (operator/admission_policy.py).
KWOKCTL_CONFIG: dict[str, Any] = {
    "kind": "KwokctlConfiguration",
    "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
    "options": {
        "bindAddress": "127.0.0.1",
        "kubeFeatureGates": "MutatingAdmissionPolicy=true",
        "kubeRuntimeConfig": "admissionregistration.k8s.io/v1beta1=true",
    },
}
# KWOK's default stages, except that simulated trainer pods are not completed at once (see the file).
KWOK_STAGES = Path(__file__).with_name("kwok_stages.yaml")


def kwokctl_config(real_node_pki: Path | None = None) -> str:
    """The kwokctl config file: options plus the stages KWOK plays kubelet by.

    With `real_node_pki` (the cluster's pki folder) the apiserver is also made
    reachable from the pods of a real node (node_config.apiserver_patches).
    """
    config: dict[str, Any] = {**KWOKCTL_CONFIG, "options": dict(KWOKCTL_CONFIG["options"])}
    if real_node_pki is not None:
        config["options"]["kubeApiserverCertSANs"] = [NODE_IP, API_SERVICE_IP]
        config["componentsPatches"] = apiserver_patches(real_node_pki)
    return yaml.safe_dump(config) + "---\n" + KWOK_STAGES.read_text()


class ClusterError(RuntimeError):
    """The control plane could not be started, reached or stopped."""


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    running: bool
    kubeconfig: Path
    server: str | None
    pids: dict[str, int]


class LocalCluster:
    """One named local control plane; `up()` is idempotent, `down()` leaves no process behind."""

    def __init__(self, name: str = "loraplex", log: Log | None = None, real_node: bool = False) -> None:
        self.name = name
        self.real_node = real_node  # the apiserver is made reachable from a real node's pods
        self.log: Log = log or (lambda message: print(message, flush=True))
        self.workdir = cache_root() / "kwok"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "clusters" / self.name

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig.yaml"

    def up(self, nodes: int = 4, shape: GpuNodeShape | None = None, timeout: float = 120.0) -> Path:
        """Start the control plane (or keep the running one) and ensure `nodes` GPU nodes exist."""
        binaries = ensure_binaries(self.log)
        if self.status().running and not self._config_changed():
            self.log(f"Found cluster {self.name} already running")
        else:
            self._create(binaries, timeout)
        self.wait_ready(timeout)
        self.ensure_gpu_nodes(nodes, shape or GpuNodeShape())
        return self.kubeconfig

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    def _config(self) -> str:
        return kwokctl_config(self.pki_dir if self.real_node else None)

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.kwokctl.yaml"

    def _config_changed(self) -> bool:
        """Whether the running cluster was made from another kwokctl config (then it is remade)."""
        path = self.config_path
        changed = not path.is_file() or path.read_text() != self._config()
        if changed:
            self.log(f"Recreating cluster {self.name}: its KWOK config changed")
        return changed

    def _create(self, binaries: Binaries, timeout: float) -> None:
        if self.state_dir.exists():
            self.log(f"Removed stale state of cluster {self.name}")
            self.down()
        started = time.monotonic()
        config = self.config_path
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(self._config())
        self._kwokctl(
            binaries,
            [
                "create",
                "cluster",
                "--config",
                str(config),
                "--runtime",
                "binary",
                "--kube-apiserver-binary",
                str(binaries.kube_apiserver),
                "--kube-controller-manager-binary",
                str(binaries.kube_controller_manager),
                "--kube-scheduler-binary",
                str(binaries.kube_scheduler),
                "--etcd-binary",
                str(binaries.etcd),
                "--kwok-controller-binary",
                str(binaries.kwok),
                # kwokctl would otherwise add the cluster to ~/.kube/config and switch to it.
                "--kubeconfig",
                str(self.workdir / f"{self.name}.merged-kubeconfig.yaml"),
                "--kube-authorization",
                "--kube-admission",
                "--wait",
                f"{int(timeout)}s",
            ],
        )
        self.log(
            f"Started cluster {self.name} in {time.monotonic() - started:.1f}s kubeconfig={self.kubeconfig}"
        )

    def down(self) -> None:
        """Stop every component and remove the state; verify no process is left."""
        pids = self._pids()
        if self.state_dir.exists():
            with contextlib.suppress(ClusterError):
                self._kwokctl(None, ["delete", "cluster"])
        wait_processes_gone(pids.values(), 15.0)  # kwokctl signals; the apiserver takes a moment to drain
        for component, pid in pids.items():
            if process_alive(pid):
                self.log(f"Killed leftover {component} pid={pid}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        wait_processes_gone(pids.values(), 10.0)
        stray = {c: p for c, p in pids.items() if process_alive(p)}
        if stray:
            raise ClusterError(f"processes still running after teardown: {stray}")
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def status(self) -> ClusterStatus:
        pids = self._pids()
        server = self._server()
        running = bool(pids) and all(process_alive(p) for p in pids.values()) and server is not None
        return ClusterStatus(self.name, running, self.kubeconfig, server, pids)

    def wait_ready(self, timeout: float) -> None:
        """Wait until the apiserver answers /readyz through the kubeconfig."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with contextlib.closing(self.api_client()) as api:
                    client.VersionApi(api).get_code()
                    client.CoreV1Api(api).read_namespace("default")
                    return
            except Exception as error:
                last_error = error
            time.sleep(0.5)
        raise ClusterError(f"apiserver of {self.name} not ready after {timeout:.0f}s: {last_error}")

    def api_client(self) -> client.ApiClient:
        return api_client(str(self.kubeconfig))

    def ensure_gpu_nodes(self, count: int, shape: GpuNodeShape) -> list[str]:
        """Create the simulated GPU nodes that are missing; return all their names."""
        names = ensure_gpu_nodes(str(self.kubeconfig), self.name, count, shape)
        self.log(f"Ensured {count} GPU nodes with {shape.gpus} GPUs each on cluster {self.name}")
        return names

    def _kwokctl(self, binaries: Binaries | None, args: list[str]) -> None:
        kwokctl = binaries.kwokctl if binaries else ensure_binaries(self.log).kwokctl
        env = {**os.environ, "KWOK_WORKDIR": str(self.workdir)}
        result = subprocess.run(
            [str(kwokctl), "--name", self.name, *args],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"kwokctl {' '.join(args[:2])} failed:\n{result.stdout}")

    def _pids(self) -> dict[str, int]:
        pid_dir = self.state_dir / "pids"
        pids: dict[str, int] = {}
        if pid_dir.is_dir():
            for path in pid_dir.glob("*.pid"):
                with contextlib.suppress(ValueError, OSError):
                    pids[path.stem] = int(path.read_text().strip())
        return pids

    def _server(self) -> str | None:
        try:
            config = yaml.safe_load(self.kubeconfig.read_text())
            return str(config["clusters"][0]["cluster"]["server"])
        except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
            return None


def ensure_gpu_nodes(kubeconfig: str, cluster: str, count: int, shape: GpuNodeShape) -> list[str]:
    """Create whichever of the cluster's `count` simulated GPU nodes are missing."""
    names = []
    with contextlib.closing(api_client(kubeconfig)) as api:
        core = client.CoreV1Api(api)
        for index in range(count):
            manifest = gpu_node(cluster, index, shape)
            names.append(manifest["metadata"]["name"])
            try:
                core.create_node(client.V1Node.model_validate(manifest))
            except ApiException as error:
                if error.status != 409:
                    raise
    return names


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def wait_processes_gone(pids: Iterable[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if process_alive(p)]
        if pending:
            time.sleep(0.1)
