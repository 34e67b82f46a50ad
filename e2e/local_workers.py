"""Real processes behind the local fleet's simulated pods: vLLM + agent per worker, a router per router pod.

KWOK plays the kubelet, so worker and router pods only look Running. On the
local fleet this daemon makes them real: for every Running worker pod it starts
vLLM on its CPU backend (serving the tiny Llama, whatever model the BaseModel
names) bound to the pod's IP (a loopback address: see `gpu_nodes.pod_cidr`)
with the flags and API key the pod spec carries, and the loraplex agent beside
it following the pod's WorkerPlacement; for every Running router pod it starts
`loraplex router` bound to that pod's IP, following the cluster. It also
serves the example adapters from an HTTPS store on `localhost:8443`, with the
digests `examples/simulated/` pins. A pod that goes away takes its processes with it.

`loraplex dev up` starts it as a daemon (`LocalWorkers`); `loraplex dev down`
stops it and everything it started.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import signal
import ssl
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from loraplex.api.labels import (
    BASE_MODEL_LABEL,
    COMPONENT_LABEL,
    ROUTER,
    TRAINER,
    TRAINING_JOB_LABEL,
    WARM_TRAINER_LABEL,
    WORKER,
)
from loraplex.e2e import daemon
from loraplex.e2e.adapter_store import AdapterStore
from loraplex.e2e.cluster import LocalCluster, process_alive
from loraplex.e2e.example_data import CATALOG_ADAPTERS, EXAMPLE_ADAPTERS, support_tickets
from loraplex.e2e.tiny_model import lora_adapter, tiny_llama
from loraplex.e2e.waiting import wait_until
from loraplex.e2e.worker_processes import (
    AgentProcess,
    RouterCluster,
    RouterProcess,
    TrainerProcess,
    VllmProcess,
)

log = logging.getLogger("loraplex.dev.workers")
STORE_PORT = 8443
# The data examples/simulated/30-trainingjob.yaml trains support-bot on (a fixed path, so the example can
# name it).
EXAMPLE_DATASET = Path("/tmp/loraplex-examples/support-tickets.jsonl")


def write_example_dataset(path: Path = EXAMPLE_DATASET) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(support_tickets())
    return path


@dataclass(frozen=True)
class WorkerPod:
    name: str
    namespace: str
    ip: str
    served_name: str
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    api_key_secret: tuple[str, str]
    catalog_template: str | None
    base_model: str | None = None


@dataclass(frozen=True)
class RouterPod:
    name: str
    namespace: str
    ip: str
    base_model: str
    served_name: str
    api_key_secret: tuple[str, str]


@dataclass(frozen=True)
class TrainerPod:
    name: str
    namespace: str
    config_map: str
    training_job: str
    image: str


def _flag(args: list[str], name: str, default: str | None = None) -> str | None:
    return args[args.index(name) + 1] if name in args else default


def _secret_ref(container: dict[str, Any], variable: str) -> tuple[str, str]:
    for env in container.get("env", []):
        if env["name"] == variable:
            ref = env["valueFrom"]["secretKeyRef"]
            return ref["name"], ref["key"]
    raise ValueError(f"container {container['name']} has no {variable}")


def pod_processes(pod: dict[str, Any]) -> WorkerPod | RouterPod | TrainerPod | None:
    """What to run behind a pod (plain dict as the API returns it), or None if nothing (yet)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    labels = meta.get("labels", {})
    ip = status.get("podIP")
    if (
        status.get("phase") != "Running"
        or not ip
        or meta.get("deletionTimestamp")
        or BASE_MODEL_LABEL not in labels
    ):
        return None
    containers = {c["name"]: c for c in spec["containers"]}
    if labels.get(COMPONENT_LABEL) == WORKER and "vllm" in containers:
        vllm_args, agent_args = containers["vllm"]["args"], containers["agent"]["args"]
        return WorkerPod(
            name=meta["name"], namespace=meta["namespace"], ip=ip,
            served_name=str(_flag(vllm_args, "--served-model-name", labels[BASE_MODEL_LABEL])),
            max_loras=int(_flag(vllm_args, "--max-loras", "4") or 4),
            max_cpu_loras=int(_flag(vllm_args, "--max-cpu-loras", "16") or 16),
            max_lora_rank=int(_flag(vllm_args, "--max-lora-rank", "16") or 16),
            api_key_secret=_secret_ref(containers["vllm"], "VLLM_API_KEY"),
            catalog_template=_flag(agent_args, "--catalog-template"),
            base_model=_flag(agent_args, "--base-model"),
        )  # fmt: skip
    if labels.get(COMPONENT_LABEL) == TRAINER and WARM_TRAINER_LABEL in labels:
        return None  # warm trainers report through their pod's log, which simulated pods lack
    if labels.get(COMPONENT_LABEL) == TRAINER and "trainer" in containers:
        finished = any(
            (c.get("state") or {}).get("terminated") for c in status.get("containerStatuses") or []
        )
        config = next((v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v), None)
        if finished or config is None:
            return None
        return TrainerPod(
            name=meta["name"], namespace=meta["namespace"], config_map=config,
            training_job=labels.get(TRAINING_JOB_LABEL, ""), image=containers["trainer"]["image"],
        )  # fmt: skip
    if labels.get(COMPONENT_LABEL) == ROUTER and "router" in containers:
        args = containers["router"]["args"]
        return RouterPod(
            name=meta["name"], namespace=meta["namespace"], ip=ip, base_model=labels[BASE_MODEL_LABEL],
            served_name=str(_flag(args, "--served-model-name", labels[BASE_MODEL_LABEL])),
            api_key_secret=_secret_ref(containers["router"], "LORAPLEX_VLLM_API_KEY"),
        )  # fmt: skip
    return None


class Runner:
    """Keeps one set of real processes per Running worker or router pod."""

    def __init__(self, cluster: LocalCluster, work: Path) -> None:
        from kubernetes import client

        self.cluster = cluster
        self.work = work
        self.api = cluster.api_client()
        self.core = client.CoreV1Api(self.api)
        self.model = tiny_llama()
        self.store = AdapterStore(work / "store", port=STORE_PORT)
        self.children: dict[str, list[Any]] = {}  # pod uid -> processes
        self.starting: set[str] = set()
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(4)

    def publish_examples(self) -> None:
        for folder, adapters in (("adapters", EXAMPLE_ADAPTERS), ("catalog", CATALOG_ADAPTERS)):
            for name, seed, rank in adapters:
                files = lora_adapter(name, seed, rank=rank, base=self.model)
                digest = self.store.publish(f"{folder}/{name}", files.path)
                log.info("Published %s/%s sha256=%s", folder, name, digest)

    def api_key(self, namespace: str, secret: tuple[str, str]) -> str:
        data = self.core.read_namespaced_secret(secret[0], namespace).data or {}
        return base64.b64decode(data[secret[1]]).decode()

    def start(self, uid: str, target: WorkerPod | RouterPod | TrainerPod) -> None:
        logs = self.work / "logs"
        started: list[Any] = []
        try:
            if isinstance(target, TrainerPod):
                started.append(self.start_trainer(uid, target))
            elif isinstance(target, WorkerPod):
                key = self.api_key(target.namespace, target.api_key_secret)
                prefix = f"{target.namespace}.{target.name}"
                vllm = VllmProcess(
                    self.model, logs / f"{prefix}.vllm.log", host=target.ip, port=8000,
                    served_name=target.served_name, api_key=key, max_loras=target.max_loras,
                    max_cpu_loras=target.max_cpu_loras, max_lora_rank=target.max_lora_rank,
                )  # fmt: skip
                started.append(vllm.start())
                agent = AgentProcess(
                    vllm, self.work / "caches" / uid, logs / f"{prefix}.agent.log",
                    worker=target.name, namespace=target.namespace, kubeconfig=self.cluster.kubeconfig,
                    catalog_template=target.catalog_template, base_model=target.base_model,
                    host=target.ip, port=8080,
                    env={"SSL_CERT_FILE": str(self.store.ca_file)},
                    extra_args=["--base-model-dir", str(self.model)],  # TargetModulesNotInBase
                )  # fmt: skip
                started.append(agent.start())
            else:
                key = self.api_key(target.namespace, target.api_key_secret)
                router = RouterProcess(
                    logs / f"{target.namespace}.{target.name}.router.log", base_model=target.base_model,
                    served_name=target.served_name, api_key=key, host=target.ip, port=8000,
                    cluster=RouterCluster(target.namespace, self.cluster.kubeconfig),
                )  # fmt: skip
                started.append(router.start())
            log.info("Started real processes behind pod %s/%s", target.namespace, target.name)
        except Exception:
            log.exception("Failed to start processes behind pod %s/%s", target.namespace, target.name)
            for process in reversed(started):
                process.stop()
            started = []
        with self.lock:
            self.starting.discard(uid)
            if started:
                self.children[uid] = started
            self._record_pids()

    def _record_pids(self) -> None:
        """Write the pids of every process started (for `dev down`'s check that none is left)."""
        pids = [
            str(p.process.pid) for group in self.children.values() for p in group if p.process is not None
        ]
        (self.work / "children.pids").write_text("\n".join(pids))

    def start_trainer(self, uid: str, target: TrainerPod) -> TrainerProcess:
        """Run the trainer with the pod's config (the tiny Llama as its base); report its end on the pod."""
        data = self.core.read_namespaced_config_map(target.config_map, target.namespace).data or {}
        config = yaml.safe_load(data["trainer.yaml"])
        folder = self.work / "trainers" / uid
        folder.mkdir(parents=True, exist_ok=True)
        config["baseModel"] = str(self.model)
        config["resultPath"] = str(folder / "result.json")
        (folder / "trainer.yaml").write_text(yaml.safe_dump(config))
        # No Kubernetes credentials, as in a trainer pod: it reports progress on stdout only.
        trainer = TrainerProcess(folder / "trainer.yaml", folder / "trainer.log").start()
        threading.Thread(
            target=self.report_trainer_end,
            args=(target, trainer, folder),
            name=f"trainer-{target.name}",
            daemon=True,
        ).start()
        return trainer

    def report_trainer_end(self, target: TrainerPod, trainer: TrainerProcess, folder: Path) -> None:
        """What the kubelet would do: the pod ends with the trainer's exit code and termination message."""
        from kubernetes.client.exceptions import ApiException

        code = trainer.wait()
        result = folder / "result.json"
        message = result.read_text()[:4096] if result.exists() else ""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        terminated = {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message,
            "startedAt": now, "finishedAt": now,
        }  # fmt: skip
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {"name": "trainer", "ready": False, "restartCount": 0, "image": target.image, "imageID": "",
                 "state": {"terminated": terminated}}
            ],
        }  # fmt: skip
        try:
            self.core.patch_namespaced_pod_status(target.name, target.namespace, {"status": status})
            log.info("Finished trainer pod %s/%s exit=%d", target.namespace, target.name, code)
        except ApiException as error:
            if error.status != 404:  # a preempted pod is gone already
                log.warning("Failed to report the end of trainer pod %s: %s", target.name, error.reason)

    def stop(self, uid: str) -> None:
        with self.lock:
            processes = self.children.pop(uid, [])
        for process in reversed(processes):
            process.stop()
        with self.lock:
            self._record_pids()
        if processes:
            log.info("Stopped processes of pod uid=%s", uid)

    def reconcile(self, pods: list[dict[str, Any]]) -> None:
        wanted = {}
        for pod in pods:
            target = pod_processes(pod)
            if target is not None:
                wanted[pod["metadata"]["uid"]] = target
        with self.lock:
            running = set(self.children) | self.starting
        for uid in running - set(wanted):
            if uid not in self.starting:
                self.stop(uid)
        for uid, target in wanted.items():
            if uid not in running:
                with self.lock:
                    self.starting.add(uid)
                self.pool.submit(self.start, uid, target)

    def run(self, stop: threading.Event) -> None:
        self.store.start()
        self.publish_examples()
        write_example_dataset()
        selector = f"{COMPONENT_LABEL} in ({WORKER},{ROUTER},{TRAINER}),{BASE_MODEL_LABEL}"
        while not stop.is_set():
            try:
                pods = self.core.list_pod_for_all_namespaces(label_selector=selector)
                self.reconcile([self.api.sanitize_for_serialization(p) for p in pods.items])  # type: ignore[no-untyped-call]
            except Exception:
                log.exception("Failed to list pods")
            stop.wait(2.0)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for uid in list(self.children):
            self.stop(uid)
        self.store.stop()
        self.api.close()  # type: ignore[no-untyped-call]


def main() -> None:
    parser = argparse.ArgumentParser(description="Real processes behind the local fleet's pods.")
    parser.add_argument("--cluster", required=True, help="Local cluster name.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cluster = LocalCluster(args.cluster)
    runner = Runner(cluster, cluster.state_dir / "workers")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        runner.run(stop)
    finally:
        runner.shutdown()


class LocalWorkers:
    """The daemon above, started by `loraplex dev up` and stopped by `loraplex dev down`."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.pid_file = cluster.state_dir / "loraplex-workers.pid"
        self.log_file = cluster.state_dir / "loraplex-workers.log"

    def pid(self) -> int | None:
        return daemon.running_pid(self.pid_file)

    def start(self) -> int:
        running = self.pid()
        if running is not None:
            return running
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "loraplex.e2e.local_workers", "--cluster", self.cluster.name]
        pid = daemon.spawn(command, env, self.log_file, self.pid_file)
        wait_until(lambda: self._serving(pid), 300, "the local worker runner serving the example adapters")
        return pid

    def _serving(self, pid: int) -> bool:
        if not process_alive(pid):
            raise RuntimeError(f"the local worker runner exited; see {self.log_file}")
        ca_file = self.cluster.state_dir / "workers" / "store-ca.pem"
        if not ca_file.exists():
            return False
        context = ssl.create_default_context(cafile=str(ca_file))
        url = f"https://localhost:{STORE_PORT}/catalog/user-3.tar.sha256"
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, timeout: float = 60.0) -> None:
        daemon.stop(self.pid_file, timeout)

    def child_pids(self) -> list[int]:
        """The pids of the vLLM, agent and router processes the runner has started."""
        path = self.cluster.state_dir / "workers" / "children.pids"
        return [int(line) for line in path.read_text().split()] if path.exists() else []


if __name__ == "__main__":
    main()
