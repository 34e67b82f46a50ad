"""Benchmark: the router's policy against round-robin, on real CPU vLLM workers under a Zipf load.

Two (``--workers``) real vLLMs (CPU backend, the tiny Llama, ``--max-loras 2
--max-cpu-loras 4``), each with its real agent loading adapters on demand from a
``file://`` catalog of real peft adapters, and a real ``loraplex router``
(static mode) in front. The same trace (Zipf(1.1) popularity over
``--adapters`` adapters, Poisson arrivals, streamed completions of 16 tokens)
goes through the router twice in the same run: with ``LORAPLEX_ROUTER_POLICY=
round_robin`` (the baseline: workers in turn, whatever they hold) and with the
shipped settings (no other LORAPLEX_ROUTER_* set). Before each pass the agents
start afresh (empty disk caches) and every adapter is unloaded from vLLM, so
both start cold. Printed per policy: TTFT p50/p99 (to the first streamed
chunk, as the client sees it; requests the router answered with an error are
counted apart), adapter loads (adapters the agents loaded into vLLM, their
``loraplex_agent_adapter_loads_total``: swaps between vLLM's CPU cache and
its GPU slots are not visible outside vLLM) and the share of requests routed
to a worker the router saw holding the adapter in a GPU slot, then the ratios. Last line:
``ttft_p99_vs_round_robin=... ttft_p50_vs_round_robin=... loads_vs_round_robin=...``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from loraplex.e2e.tiny_model import lora_adapter, tiny_llama
from loraplex.e2e.worker_processes import AgentProcess, RouterProcess, VllmProcess

MAX_TOKENS = 16


def zipf_trace(adapters: int, requests: int, rate: float, seed: int) -> list[tuple[float, str]]:
    """(arrival second, adapter) pairs: Zipf(1.1) popularity, Poisson arrivals at `rate` per second."""
    rng = random.Random(seed)
    weights = [1 / (rank**1.1) for rank in range(1, adapters + 1)]
    names = [f"a{i}" for i in range(adapters)]
    rng.shuffle(names)
    now, trace = 0.0, []
    for name in rng.choices(names, weights=weights, k=requests):
        now += rng.expovariate(rate)
        trace.append((now, name))
    return trace


def first_chunk_seconds(url: str, adapter: str) -> float | None:
    """Seconds to the first streamed chunk; None when the router answered an error (counted apart)."""
    body = json.dumps(
        {
            "model": adapter,
            "prompt": "select name from",
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": True,
        }
    ).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer unused"}
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=300) as response:
            response.read1(1)
            first = time.perf_counter() - started
            response.read()
    except urllib.error.HTTPError:
        return None
    return first


def unload_all(vllm: VllmProcess) -> None:
    """Unload every LoRA adapter the vLLM has registered (both passes start cold)."""
    for name in vllm.adapters():
        request = urllib.request.Request(
            f"{vllm.url}/v1/unload_lora_adapter",
            json.dumps({"lora_name": name}).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {vllm.api_key}"},
        )
        with urllib.request.urlopen(request, timeout=30):
            pass


def warm_up(vllm: VllmProcess, catalog: Path) -> None:
    """One adapter loaded and run on each vLLM before either pass, so the first pass does not pay
    the engine's first-LoRA warm-up alone."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {vllm.api_key}"}
    body = json.dumps({"lora_name": "warm-up", "lora_path": str((catalog / "a0").resolve())}).encode()
    with urllib.request.urlopen(
        urllib.request.Request(f"{vllm.url}/v1/load_lora_adapter", body, headers), timeout=60
    ):
        pass
    status, answer = vllm.complete("warm-up")
    if status != 200:
        raise RuntimeError(f"the warm-up completion answered {status}: {answer}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_pass(
    policy: str, vllms: dict[str, VllmProcess], catalog: Path, work: Path, trace: list[tuple[float, str]]
) -> dict[str, float]:
    for vllm in vllms.values():
        unload_all(vllm)
    agents = {}
    for name, vllm in vllms.items():
        cache = work / f"{policy}-{name}-cache"
        shutil.rmtree(cache, ignore_errors=True)
        wanted = work / "wanted.yaml"  # nothing placed: every adapter is loaded on demand
        wanted.write_text("adapters: []\n")
        agents[name] = AgentProcess(
            vllm, cache, work / f"{policy}-{name}-agent.log", worker=name, wanted_file=wanted,
            catalog_template=f"file://{catalog}/{{adapter}}",
        ).start()  # fmt: skip
    saved = os.environ.pop("LORAPLEX_ROUTER_POLICY", None)
    if policy == "round_robin":
        os.environ["LORAPLEX_ROUTER_POLICY"] = "round_robin"
    try:
        router = RouterProcess(work / f"{policy}-router.log", api_key=next(iter(vllms.values())).api_key,
                               workers=agents).start()  # fmt: skip
    finally:
        os.environ.pop("LORAPLEX_ROUTER_POLICY", None)
        if saved is not None:
            os.environ["LORAPLEX_ROUTER_POLICY"] = saved
    try:
        url = f"{router.url}/v1/completions"
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
            futures = []
            for arrival, adapter in trace:
                delay = arrival - (time.perf_counter() - started)
                if delay > 0:
                    time.sleep(delay)  # pacing the open-loop arrivals, not synchronisation
                futures.append(pool.submit(first_chunk_seconds, url, adapter))
            answers = [future.result() for future in futures]
        ttfts = [seconds for seconds in answers if seconds is not None]
        routed = router.metrics()
        tiers = {
            tier: routed.get(f'loraplex_router_requests_total{{tier="{tier}"}}', 0.0)
            for tier in ("gpu", "cpu", "disk", "miss")
        }
        loads = sum(
            value
            for agent in agents.values()
            for key, value in agent.metrics().items()
            if key.startswith("loraplex_agent_adapter_loads_total")
        )
    finally:
        router.stop()
        for agent in agents.values():
            agent.stop()
    result = {
        "ttft_p50_ms": percentile(ttfts, 0.5) * 1e3,
        "ttft_p90_ms": percentile(ttfts, 0.9) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 0.99) * 1e3,
        "loads": loads,
        "routed_to_gpu_holder": tiers["gpu"] / max(1.0, sum(tiers.values())),
        "errors": float(len(answers) - len(ttfts)),
    }
    print(f"policy={policy} " + " ".join(f"{key}={value:.3f}" for key, value in result.items()), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--adapters", type=int, default=10)
    parser.add_argument("--requests", type=int, default=120, help="Requests per pass.")
    parser.add_argument("--rate", type=float, default=3.0, help="Arrivals per second.")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loraplex-bench-router-zipf-"))
    base = tiny_llama()
    catalog = work / "catalog"
    catalog.mkdir()
    for i in range(args.adapters):
        files = lora_adapter(f"a{i}", seed=100 + i, base=base)
        (catalog / f"a{i}").symlink_to(files.path, target_is_directory=True)
        (catalog / f"a{i}.sha256").write_text(files.sha256)
    vllms: dict[str, VllmProcess] = {}
    try:
        for i in range(args.workers):
            vllms[f"w{i}"] = VllmProcess(base, work / f"vllm-w{i}.log", max_loras=2, max_cpu_loras=4).start()
        for vllm in vllms.values():
            warm_up(vllm, catalog)
        trace = zipf_trace(args.adapters, args.requests, args.rate, args.seed)
        print(
            f"workers={args.workers} adapters={args.adapters} requests={args.requests} rate={args.rate} "
            f"max_loras=2 max_cpu_loras=4 tokens={MAX_TOKENS} (tiny Llama, CPU vLLM)",
            flush=True,
        )
        baseline = run_pass("round_robin", vllms, catalog, work, trace)
        mine = run_pass("affinity", vllms, catalog, work, trace)
        print(
            f"ttft_p99_vs_round_robin={mine['ttft_p99_ms'] / baseline['ttft_p99_ms']:.3f} "
            f"ttft_p50_vs_round_robin={mine['ttft_p50_ms'] / baseline['ttft_p50_ms']:.3f} "
            f"loads_vs_round_robin={mine['loads'] / max(1.0, baseline['loads']):.3f}"
        )
    finally:
        for vllm in vllms.values():
            vllm.stop()


if __name__ == "__main__":
    main()
