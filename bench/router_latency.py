"""Benchmark: the router's added latency over calling a CPU vLLM worker directly.

A real vLLM (CPU backend, the tiny Llama) with its agent holding one adapter,
and a real `loraplex router` in front of it (static mode), on loopback. The
same requests go alternately straight to vLLM (the baseline, same run) and
through the router: completions of 8 tokens, non-streaming (total latency) and
streaming (time to the first chunk, and total). Printed: p50 and p99 of each,
the router's added milliseconds and the ratio to direct. Last line:
`router_added_ms_p50=<ms> router_added_ms_p99=<ms> stream_ttft_added_ms_p50=<ms>
stream_ttft_added_ms_p99=<ms>` (one line).
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from loraplex.e2e.tiny_model import lora_adapter, tiny_llama
from loraplex.e2e.waiting import wait_until
from loraplex.e2e.worker_processes import AgentProcess, RouterProcess, VllmProcess

BODY = {"model": "sql", "prompt": "select name from", "max_tokens": 8, "temperature": 0}


def request(url: str, api_key: str, stream: bool) -> tuple[float, float]:
    """(seconds to the first response bytes, seconds to the end) of one completion."""
    body = json.dumps({**BODY, "stream": stream}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=60) as response:
        if stream:
            response.read1(1)  # the first chunk
        first = time.perf_counter() - started
        response.read()
    return first, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


Timing = tuple[float, float]


def measure(
    samples: int, direct: Callable[[], Timing], routed: Callable[[], Timing]
) -> dict[str, list[Timing]]:
    results: dict[str, list[Timing]] = {"direct": [], "router": []}
    for _ in range(samples):  # interleaved, so drift in the machine's load hits both alike
        results["direct"].append(direct())
        results["router"].append(routed())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 requests per case instead of 500.")
    args = parser.parse_args()
    samples = 100 if args.quick else 500
    work = Path(tempfile.mkdtemp(prefix="loraplex-bench-router-"))
    adapter = lora_adapter("sql", seed=5, base=tiny_llama())
    wanted = {"adapters": [{"name": "sql", "uri": f"file://{adapter.path}", "sha256": adapter.sha256,
                            "rank": adapter.rank, "tier": "GPU"}]}  # fmt: skip
    (work / "wanted.yaml").write_text(yaml.safe_dump(wanted))
    vllm = VllmProcess(tiny_llama(), work / "vllm.log").start()
    agent = AgentProcess(vllm, work / "cache", work / "agent.log", wanted_file=work / "wanted.yaml").start()
    router = RouterProcess(work / "router.log", api_key=vllm.api_key, workers={"w0": agent}).start()
    try:
        wait_until(lambda: agent.held() == {"sql": "GPU"}, 60, "the agent holding the adapter")
        lines = []
        summary = {}
        for stream in (False, True):
            runs = measure(
                samples,
                functools.partial(request, f"{vllm.url}/v1/completions", vllm.api_key, stream),
                functools.partial(request, f"{router.url}/v1/completions", "unused", stream),
            )
            kind = "stream" if stream else "plain"
            for index, what in ((0, "ttft"), (1, "total")) if stream else ((1, "total"),):
                direct = [r[index] for r in runs["direct"]]
                routed = [r[index] for r in runs["router"]]
                for q, label in ((0.5, "p50"), (0.99, "p99")):
                    d, r = percentile(direct, q), percentile(routed, q)
                    summary[(kind, what, label)] = r - d
                    lines.append(
                        f"{kind}_{what}_{label}: direct_ms={d:.2f} router_ms={r:.2f} added_ms={r - d:.2f} "
                        f"ratio={r / d:.2f}x"
                    )
        print(f"samples={samples} tokens={BODY['max_tokens']} (tiny Llama on the CPU backend)")
        print("\n".join(lines))
        print(
            f"router_added_ms_p50={summary[('plain', 'total', 'p50')]:.2f} "
            f"router_added_ms_p99={summary[('plain', 'total', 'p99')]:.2f} "
            f"stream_ttft_added_ms_p50={summary[('stream', 'ttft', 'p50')]:.2f} "
            f"stream_ttft_added_ms_p99={summary[('stream', 'ttft', 'p99')]:.2f}"
        )
    finally:
        router.stop()
        agent.stop()
        vllm.stop()


if __name__ == "__main__":
    main()
