"""Benchmark: N TrainingJobs through the operator, warm shared trainers against a trainer pod per job.

The seeds' claim (2.81x experiment throughput from warm, shared engines), measured
the way a user meets it: TrainingJobs applied with kubectl to the local cluster
(`loraplex dev up`: this machine as a real node, the chart installed with its
defaults), trained by the trainer image in real pods under the kubelet. For each
N in 1, 2, 4, 8, in the same run and on the same capacity (the node advertises
one nvidia.com/gpu; no serving workers, so training has it all):

- dedicated: N jobs with `sharing: dedicated`, a trainer pod per job, each
  started cold (pod, imports, base model), as before warm trainers; with one GPU
  they run one after another;
- shared: the same N jobs with the default `sharing: shared`: tenants of a warm
  trainer, started cold for each N (no trainer is left from the run before).

Each job is the same small fine-tune of the tiny Llama (its own dataset, 60
steps; --steps for longer ones). A run is timed from `kubectl apply` until every job is `Succeeded`
(published); its GPU-seconds are the GPUs its trainer pods requested times the
time each pod existed within that window (a warm trainer's idle time after its
last tenant, shipped default 300 s, is outside the window: it is held for the
next job, not spent on these). It prints completed jobs per hour and
GPU-seconds per completed job for both, and the ratios. The last line:
`experiments_per_hour_ratio_at_8=<shared/dedicated> gpu_seconds_per_job_ratio_at_8=<dedicated/shared>`
plus the same at 1, 2 and 4.

Needs root (a real node), the built binaries and images (`make binaries images`);
it brings up its own cluster (`loraplex-bench`) and takes it down. --sizes picks
the Ns (default 1,2,4,8).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.cli import main as loraplex
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.example_data import support_tickets
from loraplex.e2e.node_fleet import RUN_AS, STORE_NAMESPACE, kubectl, store_dir

NAME = "loraplex-bench"
BASE = "bench-llama"
STEPS = 60
GPU = "nvidia.com/gpu"
TRAINERS = "app.kubernetes.io/component=trainer"


def base_model() -> dict[str, Any]:
    """The tiny Llama with no serving workers: training has the node's one GPU to itself."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BaseModel",
        "metadata": {"name": BASE, "namespace": STORE_NAMESPACE},
        "spec": {
            "model": {"uri": "pvc://loraplex-store/models/tiny-llama"},
            "engine": {"image": "ghcr.io/loraplex/vllm-cpu:v0.32.0", "maxLoraRank": 16},
            "resources": {"gpu": 1},
            "replicas": {"min": 0},
        },
    }


def training_job(name: str, dataset: str, sharing: str, steps: int = STEPS) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": STORE_NAMESPACE, "labels": {"bench": "training-throughput"}},
        "spec": {
            "baseModel": BASE,
            "dataset": {"uri": f"pvc://loraplex-store/datasets/{dataset}", "textField": "text"},
            "output": {"adapterName": f"{name}-out", "replicas": 0},
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
            "training": {"steps": steps, "batchSize": 4, "maxSequenceLength": 64, "learningRate": 0.002},
            "checkpoint": {"intervalSteps": 1000},
            "resources": {"gpu": 1},
            "sharing": sharing,
        },
    }


@dataclass(frozen=True)
class Run:
    jobs: int
    seconds: float
    gpu_seconds: float

    @property
    def per_hour(self) -> float:
        return self.jobs * 3600 / self.seconds

    @property
    def gpu_seconds_per_job(self) -> float:
        return self.gpu_seconds / self.jobs


def write_datasets(cluster: LocalCluster, count: int) -> list[str]:
    """One dataset per job (the support tickets, shuffled differently) in the store's datasets folder."""
    folder = store_dir(cluster) / "datasets"
    names = []
    lines = support_tickets().splitlines()
    for i in range(count):
        name = f"bench-{i}.jsonl"
        path = folder / name
        path.write_text("\n".join(lines[i:] + lines[:i]) + "\n")
        os.chown(path, RUN_AS, RUN_AS)
        names.append(name)
    return names


def apply(cluster: LocalCluster, objects: list[dict[str, Any]], folder: Path) -> None:
    manifest = folder / "objects.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    applied = kubectl(cluster, "apply", "-f", str(manifest))
    if applied.returncode != 0:
        raise RuntimeError(applied.stderr)


def run_once(
    cluster: LocalCluster, api: Any, n: int, sharing: str, datasets: list[str], folder: Path, steps: int
) -> Run:
    names = [f"{sharing[0]}{n}-{i}" for i in range(n)]
    started = time.time()
    jobs = [training_job(name, datasets[i], sharing, steps) for i, name in enumerate(names)]
    apply(cluster, jobs, folder)
    custom = client.CustomObjectsApi(api)
    deadline = started + 1800
    while True:
        listed = cast(
            dict[str, Any],
            custom.list_namespaced_custom_object(
                GROUP, VERSION, STORE_NAMESPACE, "trainingjobs", label_selector="bench=training-throughput"
            ),
        )
        statuses = {item["metadata"]["name"]: item.get("status") or {} for item in listed["items"]}
        phases = [statuses.get(name, {}).get("phase") for name in names]
        if "Failed" in phases:
            raise RuntimeError(f"a job failed: {json.dumps(statuses, indent=1)[:3000]}")
        if all(phase == "Succeeded" for phase in phases):
            break
        if time.time() > deadline:
            raise RuntimeError(f"not done in time: {phases}")
        time.sleep(0.5)
    ended = time.time()
    return Run(n, ended - started, gpu_seconds(api, started, ended))


def gpu_seconds(api: Any, start: float, end: float) -> float:
    """GPUs requested by the trainer pods in the namespace, times their lifetimes within [start, end]."""
    total = 0.0
    pods = client.CoreV1Api(api).list_namespaced_pod(STORE_NAMESPACE, label_selector=TRAINERS)
    pod: Any
    for pod in pods.items:
        gpus = sum(int((c.resources.limits or {}).get(GPU, 0)) for c in pod.spec.containers)
        born = pod.metadata.creation_timestamp.timestamp()
        gone = end
        for status in pod.status.container_statuses or []:
            terminated = status.state.terminated if status.state else None
            if terminated is not None and terminated.finished_at is not None:
                gone = min(gone, terminated.finished_at.timestamp())
        total += gpus * max(0.0, min(gone, end) - max(born, start))
    return total


def clean(cluster: LocalCluster, api: Any) -> None:
    """No TrainingJob, output adapter or trainer (warm ones included) left from the run before."""
    for kind in ("trainingjobs", "loraadapters"):
        kubectl(cluster, "delete", kind, "-n", STORE_NAMESPACE, "--all", "--wait")
    kubectl(cluster, "delete", "jobs", "-n", STORE_NAMESPACE, "-l", "app.kubernetes.io/component=trainer",
            "--wait")  # fmt: skip
    core = client.CoreV1Api(api)
    deadline = time.time() + 300
    while core.list_namespaced_pod(
        STORE_NAMESPACE, label_selector="app.kubernetes.io/component=trainer"
    ).items:
        if time.time() > deadline:
            raise RuntimeError("trainer pods left behind")
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4,8", help="the Ns, comma-separated (default 1,2,4,8)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps per job (default {STEPS})")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cluster = LocalCluster(NAME, real_node=True)
    folder = Path(f"/tmp/{NAME}")
    folder.mkdir(exist_ok=True)
    results: dict[int, tuple[Run, Run]] = {}
    try:
        if loraplex(["dev", "up", "--name", NAME, "--gpus-per-node", "1"]) != 0:
            raise SystemExit("loraplex dev up failed")
        datasets = write_datasets(cluster, max(sizes))
        apply(cluster, [base_model()], folder)
        with contextlib.closing(cluster.api_client()) as api:
            for n in sizes:
                clean(cluster, api)
                dedicated = run_once(cluster, api, n, "dedicated", datasets, folder, args.steps)
                clean(cluster, api)
                shared = run_once(cluster, api, n, "shared", datasets, folder, args.steps)
                results[n] = (dedicated, shared)
                print(
                    f"N={n}: dedicated {dedicated.seconds:.0f}s {dedicated.per_hour:.0f} jobs/h "
                    f"{dedicated.gpu_seconds_per_job:.1f} GPU-s/job; shared {shared.seconds:.0f}s "
                    f"{shared.per_hour:.0f} jobs/h {shared.gpu_seconds_per_job:.1f} GPU-s/job",
                    flush=True,
                )
    finally:
        if not args.keep:
            loraplex(["dev", "down", "--name", NAME])
    print(f"measured {datetime.now().isoformat(timespec='seconds')}, {args.steps} steps per job, one GPU")
    line = []
    for n in sorted(results, reverse=True):
        dedicated, shared = results[n]
        per_hour = shared.per_hour / dedicated.per_hour
        gpu_seconds = dedicated.gpu_seconds_per_job / shared.gpu_seconds_per_job
        line.append(f"experiments_per_hour_ratio_at_{n}={per_hour:.2f}")
        line.append(f"gpu_seconds_per_job_ratio_at_{n}={gpu_seconds:.2f}")
    print(" ".join(line))


if __name__ == "__main__":
    main()
