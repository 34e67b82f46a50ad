"""`loraplex dev ...`: the local fleet on a real local control plane.

`dev up` is the main job of the README: a control plane of real Kubernetes
binaries, simulated GPU nodes, the loraplex CRDs, and the operator running as
a background process, ready for `kubectl apply -f examples/`.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys

from loraplex.e2e import crd_install, kind_cluster, node_fleet
from loraplex.e2e.binaries import cached_binaries, ensure_binaries, ensure_helm
from loraplex.e2e.cluster import ClusterError, LocalCluster
from loraplex.e2e.gpu_nodes import GpuNodeShape
from loraplex.e2e.images import TORCH_IMAGE, ensure_images
from loraplex.e2e.local_operator import LocalOperator
from loraplex.e2e.local_workers import LocalWorkers
from loraplex.e2e.node import LocalNode, NodeError
from loraplex.e2e.priority_classes import ensure_trainer_priority_class
from loraplex.e2e.prometheus import LocalPrometheus
from loraplex.kube import api_client

SIMULATED_NODES = 4  # `dev up --simulated` without --nodes


def run(action: str, args: argparse.Namespace) -> int:
    try:
        return _ACTIONS[action](args)
    except (ClusterError, NodeError, kind_cluster.KindError) as error:
        print(f"loraplex dev: {error}", file=sys.stderr)
        return 1


def _cluster_up(args: argparse.Namespace) -> int:
    if args.nodes is None:
        args.nodes = SIMULATED_NODES
    kubeconfig = _control_plane_up(LocalCluster(args.name), args)
    _print_usage(str(kubeconfig))
    return 0


def _control_plane_up(cluster: LocalCluster, args: argparse.Namespace) -> str:
    """The control plane with GPU nodes, the loraplex CRDs and the trainer PriorityClass; its kubeconfig."""
    shape = GpuNodeShape(gpus=args.gpus_per_node)
    if args.kind:
        kubeconfig = str(kind_cluster.up(args.name, args.nodes, shape))
    else:
        kubeconfig = str(cluster.up(args.nodes, shape))
    crd_install.install_crds(kubeconfig)
    print("Installed the loraplex CRDs (basemodels, loraadapters, trainingjobs, workerplacements)")
    with contextlib.closing(api_client(kubeconfig)) as api:
        ensure_trainer_priority_class(api)  # what the chart creates on a real cluster
    return kubeconfig


def _cluster_down(args: argparse.Namespace) -> int:
    if kind_cluster.exists(args.name):
        kind_cluster.down(args.name)
    cluster = LocalCluster(args.name)
    LocalWorkers(cluster).stop()
    LocalOperator(cluster).stop()
    LocalPrometheus(cluster).stop()
    LocalNode(cluster).down()
    cluster.down()
    print(f"Stopped cluster {args.name}")
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    status = LocalCluster(args.name).status()
    if not status.running:
        print(f"Cluster {args.name}: not running")
        return 1
    print(f"Cluster {args.name}: running at {status.server}")
    print(f"kubeconfig: {status.kubeconfig}")
    for component, pid in sorted(status.pids.items()):
        print(f"  {component}: pid {pid}")
    operator_pid = LocalOperator(LocalCluster(args.name)).pid()
    print(f"  loraplex-operator: {'pid ' + str(operator_pid) if operator_pid else 'not running'}")
    workers_pid = LocalWorkers(LocalCluster(args.name)).pid()
    print(f"  loraplex-workers: {'pid ' + str(workers_pid) if workers_pid else 'not running'}")
    return 0


def _cluster_build(_: argparse.Namespace) -> int:
    for path in ensure_binaries().__dict__.values():
        print(path)
    print(ensure_helm())  # for the chart's tests
    return 0


def _fleet_up(args: argparse.Namespace) -> int:
    if not (args.simulated or args.kind):
        return _node_fleet_up(args)
    if args.prometheus:
        print("loraplex dev up: --prometheus needs the real node (its pods)", file=sys.stderr)
        return 2
    if args.nodes is None:
        args.nodes = SIMULATED_NODES
    cluster = LocalCluster(args.name)
    kubeconfig = _control_plane_up(cluster, args)
    if args.kind:
        print("Run the operator against it yourself: KUBECONFIG=... loraplex operator")
    else:
        operator = LocalOperator(cluster)
        pid = operator.start()
        print(
            f"Started the loraplex operator pid={pid} metrics=:{operator.ports()[0]} log={operator.log_file}"
        )
        if not args.no_workers:
            workers = LocalWorkers(cluster)
            pid = workers.start()
            print(
                f"Started the local worker runner pid={pid} log={workers.log_file}: real vLLM + agent behind "
                "each worker pod, a real router behind each router pod, adapters on https://localhost:8443"
            )
    _print_usage(str(kubeconfig))
    return 0


def _node_fleet_up(args: argparse.Namespace) -> int:
    """The fleet as containers on this machine as a real node, installed by the chart."""
    if args.nodes:
        print("loraplex dev up: --nodes adds simulated nodes, which only --simulated runs", file=sys.stderr)
        return 2
    cluster = LocalCluster(args.name, real_node=True)
    # The torch image is only the trainer's and the CPU engine's lower layers: nothing runs it.
    images = {ref: archive for ref, archive in ensure_images().items() if ref != TORCH_IMAGE}
    kubeconfig = cluster.up(nodes=0)
    node = LocalNode(cluster, gpus=args.gpus_per_node)
    node.up(images)
    node_fleet.restrict_namespaces(cluster, print)
    node_fleet.ensure_store(cluster, node.name, print)
    node_fleet.install_chart(cluster, print)
    print(f"Node {node.name}: kubelet, containerd and kube-proxy logs in {node.paths.root}")
    if args.prometheus:
        prometheus = LocalPrometheus(cluster)
        pid = prometheus.start(node_fleet.RELEASE_NAMESPACE)
        print(f"Started Prometheus pid={pid} on {prometheus.url} log={prometheus.log_file}")
    _print_usage(str(kubeconfig))
    return 0


def _print_usage(kubeconfig: str) -> None:
    binaries = cached_binaries()
    kubectl = str(binaries.kubectl) if binaries else (shutil.which("kubectl") or "kubectl")
    print(
        "\nThe cluster is up. Use it with:\n"
        f"  export KUBECONFIG={kubeconfig}\n"
        f"  alias kubectl={kubectl}\n"
        "  kubectl get nodes\n"
        "  kubectl apply -f examples/ && kubectl wait --for=condition=Ready lora --all --timeout=5m\n"
        "  ROUTER=$(kubectl get pod -l app.kubernetes.io/component=router \\\n"
        "    -o jsonpath='{.items[0].status.podIP}')\n"
        "  curl -s http://$ROUTER:8000/v1/completions -H 'Content-Type: application/json' \\\n"
        '    -d \'{"model": "sql-gen", "prompt": "select", "max_tokens": 8}\'\n'
    )


_ACTIONS = {
    "cluster-up": _cluster_up,
    "cluster-down": _cluster_down,
    "cluster-status": _cluster_status,
    "cluster-build": _cluster_build,
    "up": _fleet_up,
    "down": _cluster_down,
}
