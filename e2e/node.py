"""This machine as a real Kubernetes node of a local control plane.

containerd (CRI, runc, overlayfs) runs the pods, a CNI bridge gives them
addresses in node_config.POD_SUBNET, the kubelet built from the pinned
Kubernetes source registers the node, and kube-proxy (iptables) makes Services
work, so the operator, routers, workers and trainers run as containers the way
they would on any cluster. Images are imported into containerd from the OCI
archives images.py builds (no registry is reachable here), and the node
advertises GPUs as an extended resource so the operator's GPU requests schedule.

Root is needed (cgroups, network namespaces, iptables). One real node per
machine: its bridge, iptables rules and ports are the machine's.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loraplex.e2e import daemon
from loraplex.e2e.binaries import cache_root, ensure_binaries
from loraplex.e2e.cluster import LocalCluster, process_alive
from loraplex.e2e.debian_packages import ensure_packages
from loraplex.e2e.node_config import (
    BRIDGE,
    CRI_NAMESPACE,
    NODE_IP,
    NODE_PREFIX,
    NodePaths,
    cni_config,
    containerd_config,
    gpu_capacity_patch,
    kube_proxy_args,
    kubelet_args,
    kubelet_config,
)
from loraplex.e2e.waiting import wait_until

Log = Callable[[str], None]

# command -> Debian package, for everything the node runs that Debian ships.
NODE_PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
}
SYSCTLS = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}


class NodeError(RuntimeError):
    """The node could not be started or stopped."""


class LocalNode:
    """The real node of one local cluster: `up()` is idempotent, `down()` leaves no process behind."""

    def __init__(self, cluster: LocalCluster, gpus: int = 8, log: Log | None = None) -> None:
        self.cluster = cluster
        self.gpus = gpus
        self.name = f"{cluster.name}-node"
        self.log: Log = log or (lambda message: print(message, flush=True))
        self.paths = NodePaths(cache_root() / "node" / cluster.name)

    def up(self, images: Mapping[str, Path], timeout: float = 180.0) -> str:
        """Start containerd, import `images` (ref -> OCI archive), kubelet, kube-proxy; the node name."""
        ensure_packages(NODE_PACKAGES, self.log)
        self._prepare_host()
        self._write_config()
        self._start("containerd", ["containerd", "--config", str(self.paths.containerd_config)])
        wait_until(self._containerd_ready, 30, "containerd answering on its socket")
        self._import(images)
        binaries = ensure_binaries(self.log)
        kube_dir = binaries.kube_apiserver.parent
        self._start("kubelet", [str(kube_dir / "kubelet"), *kubelet_args(self.paths, self.name)])
        self._start("kube-proxy", [str(kube_dir / "kube-proxy"), *kube_proxy_args(self.paths, self.name)])
        wait_until(self._node_ready, timeout, f"node {self.name} Ready")
        self._advertise_gpus()
        self.log(f"Node {self.name} is Ready at {NODE_IP} with {self.gpus} {'GPUs'} advertised")
        return self.name

    def running(self) -> bool:
        return all(daemon.running_pid(self.paths.pid(d)) for d in ("containerd", "kubelet", "kube-proxy"))

    def down(self, timeout: float = 120.0) -> None:
        """Remove the node's pods through the kubelet, then stop every daemon and undo the host changes."""
        if not self.paths.root.exists():
            return  # this cluster never had a real node
        if daemon.running_pid(self.paths.pid("kubelet")) and self.cluster.status().running:
            with contextlib.suppress(Exception):
                self._evict_all_pods(timeout)
        for name in ("kube-proxy", "kubelet"):
            daemon.stop(self.paths.pid(name), timeout=15.0)
        self._kill_containers()
        daemon.stop(self.paths.pid("containerd"), timeout=15.0)
        self._kill_shims()
        self._unmount_all()
        self._undo_host_changes()
        if self.paths.root.exists():
            shutil.rmtree(self.paths.root, ignore_errors=True)

    # -- start-up ---------------------------------------------------------------------------------

    def _prepare_host(self) -> None:
        for key, value in SYSCTLS.items():
            if not Path("/proc/sys", key).exists() and key.startswith("net/bridge"):
                _run(["modprobe", "br_netfilter"], check=False)
            Path("/proc/sys", key).write_text(value)
        if _run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            _run(["ip", "addr", "add", f"{NODE_IP}/{NODE_PREFIX}", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])

    def _write_config(self) -> None:
        paths = self.paths
        for folder in (paths.root, paths.cni_conf_dir, paths.cni_state, paths.kubelet_root):
            folder.mkdir(parents=True, exist_ok=True)
        paths.containerd_config.write_text(containerd_config(paths))
        (paths.cni_conf_dir / "10-loraplex.conflist").write_text(cni_config(paths))
        paths.kubelet_config.write_text(kubelet_config(paths, self.cluster.pki_dir / "ca.crt"))
        shutil.copyfile(self.cluster.kubeconfig, paths.kubeconfig)

    def _start(self, name: str, command: list[str]) -> None:
        if daemon.running_pid(self.paths.pid(name)) is not None:
            return
        executable = shutil.which(command[0]) or command[0]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(self.paths.root)}
        daemon.spawn([executable, *command[1:]], env, self.paths.log(name), self.paths.pid(name))

    def _containerd_ready(self) -> bool:
        if daemon.running_pid(self.paths.pid("containerd")) is None:
            raise NodeError(f"containerd exited; see {self.paths.log('containerd')}")
        return self._ctr(["version"], check=False).returncode == 0

    def _import(self, images: Mapping[str, Path]) -> None:
        """Import each archive not imported yet (archives are content-addressed by images.py)."""
        done = set(self.paths.imported.read_text().split()) if self.paths.imported.is_file() else set()
        for ref, archive in images.items():
            if str(archive) in done:
                continue
            started = time.monotonic()
            self._ctr(["images", "import", str(archive)])
            with self.paths.imported.open("a") as record:
                record.write(f"{archive}\n")
            self.log(f"Imported {ref} into the node's containerd in {time.monotonic() - started:.0f}s")

    def _node_ready(self) -> bool:
        for name in ("kubelet", "kube-proxy"):
            if daemon.running_pid(self.paths.pid(name)) is None:
                raise NodeError(f"{name} exited; see {self.paths.log(name)}")
        with contextlib.closing(self.cluster.api_client()) as api:
            try:
                node = client.CoreV1Api(api).read_node(self.name)
            except ApiException as error:
                if error.status == 404:
                    return False
                raise
        conditions = {c.type: c.status for c in (node.status and node.status.conditions) or []}
        return conditions.get("Ready") == "True"

    def _advertise_gpus(self) -> None:
        with contextlib.closing(self.cluster.api_client()) as api:
            client.CoreV1Api(api).patch_node_status(self.name, gpu_capacity_patch(self.gpus))

    # -- tear-down --------------------------------------------------------------------------------

    def _evict_all_pods(self, timeout: float) -> None:
        """Cordon the node, delete every pod bound to it, and wait until the kubelet has torn them down.

        Cordoned first, so the pods controllers make again stay Pending instead of starting here.
        """
        with contextlib.closing(self.cluster.api_client()) as api:
            core = client.CoreV1Api(api)
            core.patch_node(self.name, {"spec": {"unschedulable": True}})
            selector = f"spec.nodeName={self.name}"
            for pod in core.list_pod_for_all_namespaces(field_selector=selector).items:
                if pod.metadata is None or not pod.metadata.name or not pod.metadata.namespace:
                    continue
                with contextlib.suppress(ApiException):
                    core.delete_namespaced_pod(
                        pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                    )
            wait_until(
                lambda: (
                    not core.list_pod_for_all_namespaces(field_selector=selector).items
                    and not self._sandboxes()
                ),
                timeout,
                f"pods of {self.name} gone",
                interval=1.0,
            )

    def _sandboxes(self) -> list[str]:
        result = self._ctr(["tasks", "ls", "-q"], check=False)
        return result.stdout.split() if result.returncode == 0 else []

    def _kill_containers(self) -> None:
        if daemon.running_pid(self.paths.pid("containerd")) is None:
            return
        for task in self._sandboxes():
            self._ctr(["tasks", "kill", "--signal", "SIGKILL", task], check=False)
        time.sleep(1.0)
        for task in self._sandboxes():
            self._ctr(["tasks", "delete", "--force", task], check=False)

    def _kill_shims(self) -> None:
        """containerd's shims outlive it by design; the node's are the ones started with its socket."""
        marker = str(self.paths.socket)
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                command = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
                if "containerd-shim" in command and marker in command:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid_dir.name), 9)

    def _unmount_all(self) -> None:
        """Unmount what the kubelet and containerd mounted below the node's folder (deepest first)."""
        root = str(self.paths.root)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(root)), key=len, reverse=True):
            _run(["umount", "-l", mount], check=False)
        netns = Path("/var/run/netns")
        for entry in netns.glob("cni-*") if netns.is_dir() else []:
            _run(["umount", str(entry)], check=False)
            with contextlib.suppress(OSError):
                entry.unlink()

    def _undo_host_changes(self) -> None:
        if shutil.which("iptables"):
            kube_dir = ensure_binaries(self.log).kube_apiserver.parent
            _run([str(kube_dir / "kube-proxy"), "--cleanup"], check=False)
            for table in ("nat", "filter", "mangle"):
                _drop_chains(table, "CNI-")  # the bridge plugin's masquerading
                _drop_chains(table, "KUBE-")  # the kubelet's canaries, what kube-proxy left
        _run(["ip", "link", "del", BRIDGE], check=False)

    def _ctr(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["ctr", "--address", str(self.paths.socket), "--namespace", CRI_NAMESPACE, *args]
        return _run(command, check=check)


def _drop_chains(table: str, prefix: str) -> None:
    """Remove the iptables rules that jump to chains named `prefix`*, then those chains."""
    rules = _run(["iptables", "-t", table, "-S"], check=False).stdout.splitlines()
    for rule in rules:
        parts = shlex.split(rule)  # comments are quoted and hold spaces
        if (
            parts[:1] == ["-A"]
            and not parts[1].startswith(prefix)
            and any(p.startswith(prefix) for p in parts)
        ):
            _run(["iptables", "-t", table, "-D", *parts[1:]], check=False)
    chains = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(prefix)]
    for chain in chains:
        _run(["iptables", "-t", table, "-F", chain], check=False)
    for chain in chains:
        _run(["iptables", "-t", table, "-X", chain], check=False)


def _run(command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(command)} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result


def node_pids(node: LocalNode) -> dict[str, int]:
    """The node's daemons that run now, by name (for `dev cluster status`)."""
    pids = {}
    for name in ("containerd", "kubelet", "kube-proxy"):
        pid = daemon.running_pid(node.paths.pid(name))
        if pid is not None and process_alive(pid):
            pids[name] = pid
    return pids
