"""Benchmark: time to make an adapter servable from each tier, on the real vLLM CPU engine.

A real vLLM (CPU backend, the tiny Llama) and a real `loraplex agent` run on
loopback; adapters are real peft files. Per tier, each sample times what a
request for an adapter costs on top of serving it, until its first token:

- cpu: the adapter is registered in vLLM (CPU cache) but not in a GPU slot
  (more adapters are active than vLLM has slots): a one-token completion.
- disk: the adapter is in the agent's disk cache, not in vLLM: the agent's
  `/v1/adapters/ensure` (runtime load) plus a one-token completion.
- store: the adapter is only in the store (HTTPS on loopback, a tar archive
  and its digest): ensure (fetch, verify, unpack, load) plus the completion.

Baseline, measured in the same run: the same one-token completion with an
adapter already active in a GPU slot; each tier is also printed as a ratio to
it. The last line is exactly
`cpu_tier_load_ms_p50=<ms> disk_tier_load_ms_p50=<ms> store_tier_load_ms_p50=<ms>`.

With `--gpu` (on a machine with CUDA; no vLLM needed) it instead times the
host-to-GPU load of a rank-16 adapter shaped for Llama-3-8B (about 84 MB in
bf16): reading the safetensors file and copying each tensor, against one
pinned bulk copy measured in the same run (the baseline) and against the
PCIe 5.0 x16 floor (64 GB/s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from loraplex.e2e.adapter_store import AdapterStore
from loraplex.e2e.tiny_model import lora_adapter, tiny_llama
from loraplex.e2e.waiting import wait_until
from loraplex.e2e.worker_processes import AgentProcess, VllmProcess

MAX_LORAS = 2


def timed(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return (time.perf_counter() - started) * 1000


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


# A rank-16 LoRA on every projection of a Llama-3-8B shape (32 layers, hidden 4096, 8 KV heads of 128,
# MLP 14336), in bf16: about 84 MB, what one 8B adapter moves from host to GPU when it takes a slot.
LLAMA_8B = {"layers": 32, "hidden": 4096, "kv": 1024, "mlp": 14336}
PCIE_GEN5_X16_BYTES_PER_S = 64e9


def gpu_adapter_load(repeats: int) -> None:
    """Host-to-GPU load of an 8B-shaped rank-16 adapter, against the PCIe floor (needs torch with CUDA)."""
    import torch
    from safetensors.torch import load_file, save_file

    shapes = {"q": (LLAMA_8B["hidden"], LLAMA_8B["hidden"]), "k": (LLAMA_8B["hidden"], LLAMA_8B["kv"]),
              "v": (LLAMA_8B["hidden"], LLAMA_8B["kv"]), "o": (LLAMA_8B["hidden"], LLAMA_8B["hidden"]),
              "gate": (LLAMA_8B["hidden"], LLAMA_8B["mlp"]), "up": (LLAMA_8B["hidden"], LLAMA_8B["mlp"]),
              "down": (LLAMA_8B["mlp"], LLAMA_8B["hidden"])}  # fmt: skip
    rank = 16
    tensors = {}
    for layer in range(LLAMA_8B["layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, dtype=torch.bfloat16)
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, dtype=torch.bfloat16)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    path = Path(tempfile.mkdtemp()) / "adapter_model.safetensors"
    save_file(tensors, str(path))
    device = torch.device("cuda")

    def file_to_gpu() -> None:  # what a runtime load does: read the file, copy each tensor to the GPU
        loaded = load_file(str(path))
        for tensor in loaded.values():
            tensor.to(device, non_blocking=False)
        torch.cuda.synchronize()

    flat = torch.empty(size, dtype=torch.uint8).pin_memory()
    target = torch.empty(size, dtype=torch.uint8, device=device)

    def pinned_copy() -> None:  # the best the bus allows: one pinned buffer, one copy
        target.copy_(flat, non_blocking=True)
        torch.cuda.synchronize()

    file_to_gpu()
    pinned_copy()
    load = p50([timed(file_to_gpu) for _ in range(repeats)])
    bulk = p50([timed(pinned_copy) for _ in range(repeats)])
    floor = size / PCIE_GEN5_X16_BYTES_PER_S * 1000
    print(f"gpu={torch.cuda.get_device_name()} adapter_bytes={size} rank={rank} shape=llama-3-8b")
    print(f"gpu_pcie_floor_ms={floor:.2f} (64 GB/s, PCIe 5.0 x16)")
    print(f"gpu_pinned_copy_ms_p50={bulk:.2f} pinned_copy_vs_floor={bulk / floor:.2f}x "
          f"pinned_gb_per_s={size / bulk / 1e6:.1f}")  # fmt: skip
    print(
        f"gpu_file_to_gpu_load_ms_p50={load:.2f} file_load_vs_floor={load / floor:.2f}x "
        f"file_load_vs_pinned_copy={load / bulk:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer samples (about a minute after start-up).")
    parser.add_argument(
        "--gpu", action="store_true", help="Only the host-to-GPU load of an 8B-shaped adapter (needs CUDA)."
    )
    args = parser.parse_args()
    if args.gpu:
        gpu_adapter_load(repeats=10 if args.quick else 50)
        return
    samples = 8 if args.quick else 30
    work = Path(tempfile.mkdtemp(prefix="loraplex-bench-load-"))
    base = tiny_llama()
    files = [lora_adapter(f"bench{i}", seed=1000 + i, base=base) for i in range(4)]
    store = AdapterStore(work / "store").start()
    vllm = VllmProcess(base, work / "vllm.log", max_loras=MAX_LORAS, max_cpu_loras=64).start()
    names = {tier: [f"{tier}-{i}" for i in range(samples)] for tier in ("cpu", "disk", "store")}
    digests = {}
    for tier_names in names.values():
        for i, name in enumerate(tier_names):
            digests[name] = store.publish(name, files[i % len(files)].path)
    wanted = [
        {"name": name, "uri": store.uri(name), "sha256": digests[name], "rank": 8, "tier": tier}
        for tier, key in (("CPU", "cpu"), ("Disk", "disk"))
        for name in names[key]
    ]
    (work / "wanted.yaml").write_text(yaml.safe_dump({"adapters": wanted}))
    agent = AgentProcess(
        vllm, work / "cache", work / "agent.log", wanted_file=work / "wanted.yaml",
        catalog_template=store.catalog_template(), env={"SSL_CERT_FILE": str(store.ca_file)},
    ).start()  # fmt: skip
    try:
        wait_until(lambda: len(agent.residency()["adapters"]) == len(wanted), 300, "agent holding the set-up")

        def first_token(name: str) -> None:
            status, body = vllm.complete(name, max_tokens=1)
            assert status == 200, body

        def ensure_then_first_token(name: str) -> None:
            status, body = agent.ensure(name)
            assert status == 200, body
            first_token(name)

        first_token(names["cpu"][0])
        baseline = [timed(lambda: first_token(names["cpu"][0])) for _ in range(samples)]
        cpu = []
        for i, name in enumerate(names["cpu"]):
            # Two other adapters since this one was used: it has left the GPU slots, it is in CPU only.
            first_token(names["cpu"][(i + 1) % samples])
            first_token(names["cpu"][(i + 2) % samples])
            cpu.append(timed(lambda name=name: first_token(name)))
        disk = [timed(lambda name=name: ensure_then_first_token(name)) for name in names["disk"]]
        catalog = [f"tail-{i}" for i in range(samples)]
        for i, name in enumerate(catalog):
            store.publish(name, files[i % len(files)].path)
        store_tier = [timed(lambda name=name: ensure_then_first_token(name)) for name in catalog]
    finally:
        agent.stop()
        vllm.stop()
        store.stop()

    base_ms = p50(baseline)
    adapter_bytes = sum(p.stat().st_size for p in files[0].path.iterdir())
    print(f"samples={samples} max_loras={MAX_LORAS} adapter_bytes={adapter_bytes}")
    print(f"baseline_gpu_resident_first_token_ms_p50={base_ms:.1f}")
    for tier, values in (("cpu", cpu), ("disk", disk), ("store", store_tier)):
        print(
            f"{tier}_tier_load_ms_p50={p50(values):.1f} {tier}_tier_load_ms_max={max(values):.1f} "
            f"{tier}_vs_gpu_resident={p50(values) / base_ms:.2f}x"
        )
    print(
        f"cpu_tier_load_ms_p50={p50(cpu):.1f} disk_tier_load_ms_p50={p50(disk):.1f} "
        f"store_tier_load_ms_p50={p50(store_tier):.1f}"
    )


if __name__ == "__main__":
    main()
