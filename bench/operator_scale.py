"""Operator at scale on the real control plane: N LoRAAdapters on a fleet of simulated GPU nodes.

Starts its own local control plane (`loraplex-scale`), GPU nodes, a BaseModel
with one worker per node, and the operator as a real process; then creates
the adapters as fast as the client can and measures:

- how placement progressed: adapters placed while the apply still ran, and
  the seconds until the first and half of them were;
- seconds from the start of the bulk apply until every adapter's status shows
  its copies placed (phase Loading or Ready: with no agent running, copies are
  placed but not loaded; counted from one watch stream, so this script does not
  compete with the operator by re-listing every adapter), against the seconds
  the bulk apply itself took;
- the operator's peak RSS;
- the CPU seconds each process (apiserver, etcd, controllers, KWOK, the
  operator, this script) used from the bulk apply until all were placed: on a
  machine that small, what bounds the time;
- the API writes the operator issued, counted by the apiserver itself
  (`apiserver_request_total` for the loraplex.dev and kopf.dev groups, minus
  the adapters this script created), against the number of adapters.

Goals (issue 3): all placed within 60 s, RSS <= 500 MB, writes <= 2 x adapters.
`--quick` runs 1,000 adapters on 100 nodes. Last line: key=value pairs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from kubernetes import client, watch
from urllib3.exceptions import ProtocolError

from loraplex.api import GROUP, VERSION
from loraplex.e2e.binaries import cached_binaries
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.crd_install import install_crds
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.waiting import wait_until

NAMESPACE = "bench"
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE")
SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def writes_by_group(kubeconfig: Path) -> float:
    """Write requests the apiserver has served for the loraplex.dev and kopf.dev groups."""
    return sum(writes_by_resource(kubeconfig).values())


def writes_by_resource(kubeconfig: Path) -> dict[tuple[str, str, str], float]:
    """Write requests the apiserver has served for the loraplex.dev and kopf.dev groups, by
    (resource, subresource, verb)."""
    binaries = cached_binaries()
    assert binaries is not None
    raw = subprocess.run(
        [str(binaries.kubectl), "--kubeconfig", str(kubeconfig), "get", "--raw", "/metrics"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    counts: dict[tuple[str, str, str], float] = {}
    for line in raw.splitlines():
        match = SAMPLE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("group") in (GROUP, "kopf.dev") and labels.get("verb") in WRITE_VERBS:
            key = (labels.get("resource", ""), labels.get("subresource", ""), labels["verb"])
            counts[key] = counts.get(key, 0.0) + float(match["value"])
    return counts


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (threads included; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_component(cluster: LocalCluster, operator: OperatorProcess) -> dict[str, float]:
    """CPU seconds so far of the control plane's processes, the operator and this script."""
    pids = dict(cluster.status().pids)
    if operator.process is not None:
        pids["operator"] = operator.process.pid
    pids["bench-client"] = os.getpid()
    return {component: cpu_seconds(pid) for component, pid in pids.items()}


def adapter(index: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoRAAdapter",
        "metadata": {"name": f"a-{index:06d}"},
        "spec": {
            "baseModel": "bench",
            "source": {"uri": f"s3://adapters/a-{index:06d}/", "sha256": f"{index:064x}"},
            "rank": 8,
            "replicas": 2 if index % 100 == 0 else 1,
            "policy": "Pinned" if index % 1000 == 0 else "OnDemand",
        },
    }


class PlacedWatch:
    """Counts adapters whose status shows their copies placed, from one watch stream.

    Re-listing 10,000 adapters every poll would have this script (a client on the same 2 cores)
    serialize and parse hundreds of thousands of objects while the operator works; a watch sees
    each status change once.
    """

    def __init__(self, custom: client.CustomObjectsApi) -> None:
        self.custom = custom
        self.placed: set[str] = set()
        self.placed_at: list[float] = []  # monotonic time of each adapter's first placed status
        listed = cast(
            dict[str, Any],
            custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "loraadapters", limit=1),
        )
        self.resource_version = listed["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, "loraadapters",
                    resource_version=self.resource_version, timeout_seconds=300,
                )  # fmt: skip
                for event in stream:
                    item = event["object"]
                    self.resource_version = item["metadata"]["resourceVersion"]
                    name = item["metadata"]["name"]
                    if (
                        item.get("status", {}).get("phase") in ("Loading", "Ready")
                        and name not in self.placed
                    ):
                        self.placed.add(name)
                        self.placed_at.append(time.monotonic())
            except (ProtocolError, client.ApiException):
                time.sleep(0.5)  # the connection broke (or the cluster is going down): watch again

    def count(self) -> int:
        return len(self.placed)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1,000 adapters on 100 nodes")
    parser.add_argument("--adapters", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--operator-log", type=Path, help="keep the operator's log here")
    args = parser.parse_args()
    adapters, nodes = (1_000, 100) if args.quick else (args.adapters, args.nodes)

    cluster = LocalCluster("loraplex-scale")
    cluster.down()
    started = time.monotonic()
    cluster.up(nodes=nodes)
    install_crds(str(cluster.kubeconfig))
    print(f"cluster_up_seconds={time.monotonic() - started:.1f} nodes={nodes}", flush=True)
    with tempfile.TemporaryDirectory() as scratch, contextlib.closing(cluster.api_client()) as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        operator = OperatorProcess(cluster.kubeconfig, NAMESPACE, Path(scratch) / "operator.log").start()
        try:
            spec = {
                "model": {"uri": "/models/bench"},
                "replicas": {"min": nodes},
                "engine": {"maxLoras": 8, "maxCpuLoras": 64},
            }
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BaseModel", "metadata": {"name": "bench"}}
            custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "basemodels", {**body, "spec": spec}
            )
            fleet_started = time.monotonic()
            wait_until(lambda: _workers_ready(api, nodes), args.timeout, f"{nodes} workers ready", interval=2)
            print(f"fleet_ready_seconds={time.monotonic() - fleet_started:.1f} workers={nodes}", flush=True)
            writes_before = writes_by_resource(cluster.kubeconfig)
            placed = PlacedWatch(custom)

            cpu_before = cpu_by_component(cluster, operator)
            apply_started = time.monotonic()

            def create(index: int) -> None:
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, "loraadapters", adapter(index)
                )

            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(create, range(adapters)))
            apply_seconds = time.monotonic() - apply_started
            placed_during_apply = placed.count()
            print(f"bulk_apply_seconds={apply_seconds:.1f} adapters={adapters}", flush=True)
            wait_until(lambda: placed.count() == adapters, args.timeout, "every adapter placed", interval=0.5)
            placed_seconds = time.monotonic() - apply_started
            first, half = (placed.placed_at[i] - apply_started for i in (0, adapters // 2))
            print(
                f"placed_during_bulk_apply={placed_during_apply} first_placed_seconds={first:.1f} "
                f"half_placed_seconds={half:.1f} half_placed_vs_bulk_apply={half / apply_seconds:.2f}",
                flush=True,
            )
            cpu_after = cpu_by_component(cluster, operator)
            cpu = {c: cpu_after[c] - cpu_before.get(c, 0.0) for c in cpu_after}
            for component, seconds in sorted(cpu.items(), key=lambda item: -item[1]):
                print(f"cpu component={component} seconds={seconds:.1f}")
            total = sum(cpu.values())
            print(
                f"cpu_seconds_total={total:.1f} cores_busy={total / placed_seconds:.2f} "
                f"operator_cpu_ms_per_adapter={cpu.get('operator', 0.0) * 1e3 / adapters:.2f}",
                flush=True,
            )
            time.sleep(5)  # let trailing writes land before counting
            writes_after = writes_by_resource(cluster.kubeconfig)
            for key in sorted(writes_after):
                resource, subresource, verb = key
                count = writes_after[key] - writes_before.get(key, 0.0)
                if count:
                    print(
                        f"writes resource={resource}{'/' + subresource if subresource else ''} "
                        f"verb={verb} count={count:.0f}"
                    )
            writes = sum(writes_after.values()) - sum(writes_before.values()) - adapters
            rss = peak_rss_mb(operator.process.pid) if operator.process else 0.0
        finally:
            operator.stop()
            if args.operator_log:
                shutil.copyfile(Path(scratch) / "operator.log", args.operator_log)
    cluster.down()
    print(f"placed_vs_bulk_apply={placed_seconds / apply_seconds:.2f}")
    print(f"writes_per_adapter={writes / adapters:.2f}")
    print(
        f"all_placed_seconds={placed_seconds:.1f} operator_peak_rss_mb={rss:.0f} api_writes={writes:.0f} "
        f"adapters={adapters} nodes={nodes}"
    )
    return 0


def _workers_ready(api: client.ApiClient, count: int) -> bool:
    try:
        statefulset = client.AppsV1Api(api).read_namespaced_stateful_set("bench-worker", NAMESPACE)
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return False
        raise
    return statefulset.status is not None and (statefulset.status.ready_replicas or 0) >= count


if __name__ == "__main__":
    sys.exit(main())
