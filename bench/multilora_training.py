"""Benchmark: N LoRA adapters trained concurrently in one trainer against N single-adapter jobs in a row.

For each N in 1, 2, 4, 8 it runs, in the same run, on the same data, steps and
hyperparameters:

- concurrent: one `loraplex trainer` process with N adapters (one base load,
  one combined batch per step through the shared base);
- sequential: N `loraplex trainer` processes one after another, one adapter
  each; every one pays its own start-up (Python and torch imports, reading the
  base model, moving it to the device) as separate Kubernetes jobs would.
  Adapter i's single-adapter job is the same job whatever N is, so each runs
  once and the baseline for N is the sum of jobs 0..N-1;
- warm: one warm trainer (`tenantsFile`) with the N jobs listed as its tenants,
  as a shared TrainingJob runs, timed until every tenant is reported
  Succeeded (its idle wait for the next job after that is not counted).

Each run is a real subprocess of the real command (`python -m loraplex.cli
trainer --config ...`), timed from spawn to exit: start-up, training,
checkpoints (one, mid-run) and publishing included. It prints adapters
finished per hour for both and their ratio, plus the training-only ratio
(from each process's first `started` event to its exit), which shows how much
of the gain is batching and how much is start-up paid once instead of N
times. The last line is `ratio_at_8=<concurrent / sequential adapters per hour at N=8>
warm_ratio_at_8=<warm / sequential>`.

--quick: the tiny 2-layer Llama (loraplex.e2e.tiny_model) on CPU. Without it
(or with --model), a random Llama of a larger shape is built here (never
downloaded) and saved once under the cache, so each job reads it from disk.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplex.e2e.tiny_model import CORPUS, cache_root, tiny_llama

# Larger shapes for GPU runs: (hidden, intermediate, layers, heads, kv heads, vocab).
SHAPES: dict[str, tuple[int, int, int, int, int, int] | None] = {
    "tiny": None,
    "small": (1024, 2816, 12, 16, 4, 32000),  # ~0.3B parameters
    "1b": (2048, 5632, 22, 32, 4, 32000),  # TinyLlama-1.1B's shape
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class Timing:
    wall: float  # spawn to exit
    startup: float  # spawn to the first `started` event
    steps: int


def build_base(shape: str) -> Path:
    """The base model's folder: the tiny Llama, or a random Llama of a larger shape (cached)."""
    tiny = tiny_llama()
    if SHAPES[shape] is None:
        return tiny
    dest = cache_root() / f"bench-llama-{shape}"
    if dest.is_dir():
        return dest
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    dims = SHAPES[shape]
    assert dims is not None, shape  # "tiny" returned above
    hidden, intermediate, layers, heads, kv_heads, vocab = dims
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[no-untyped-call,arg-type]
    tmp = Path(tempfile.mkdtemp(prefix=".bench-", dir=dest.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(tmp)  # ids stay below the tiny vocabulary
    tmp.rename(dest)
    return dest


def write_dataset(path: Path, seed: int, examples: int, words: int) -> None:
    """Text examples of `words` corpus words each (long enough to fill --seq-len)."""
    vocabulary = CORPUS.split()
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(examples):
            handle.write(json.dumps({"text": " ".join(rng.choice(vocabulary) for _ in range(words))}) + "\n")


def one_job(i: int, data: Path, args: argparse.Namespace, run_dir: Path) -> list[dict[str, Any]]:
    """The jobs of a run that trains adapter `i` alone."""
    return [adapter_job(i, data, run_dir, args)]


def adapter_job(index: int, data: Path, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": f"adapter-{index}",
        "dataset": {"uri": (data / f"{index}.jsonl").as_uri()},
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.05, "targetModules": TARGETS},
        "training": {
            "steps": args.steps,
            "batchSize": args.batch_size,
            "learningRate": 1e-4,
            "maxSequenceLength": args.seq_len,
            "seed": index,
        },
        "checkpoint": {"intervalSteps": max(1, args.steps // 2)},
        "outputUri": (run_dir / "out" / f"adapter-{index}").as_uri(),
    }


def run_trainer(base: Path, jobs: list[dict[str, Any]], run_dir: Path, args: argparse.Namespace) -> Timing:
    """One one-shot trainer process (`adapters` in its config), timed from spawn to exit."""
    run_dir.mkdir(parents=True)
    config = {**trainer_settings(base, run_dir, args), "adapters": jobs}
    steps = 0

    def follow(event: dict[str, Any]) -> bool:
        nonlocal steps
        if event["event"] == "finished":
            steps = int(event["step"])
        return False

    timing = spawn_trainer(config, run_dir, follow)
    check_published(jobs)
    return Timing(timing.wall, timing.startup, steps)


def run_warm(base: Path, jobs: list[dict[str, Any]], run_dir: Path, args: argparse.Namespace) -> Timing:
    """A warm trainer (`tenantsFile`, shipped poll and idle settings) with the jobs listed as its
    tenants, each with its own checkpoints, as the operator lists them; timed from spawn until every
    tenant is reported Succeeded (published). Then it is stopped: its idle wait for the next job is
    not the jobs' time."""
    run_dir.mkdir(parents=True)
    tenants = [{**job, "checkpointUri": (run_dir / "checkpoints" / job["name"]).as_uri()} for job in jobs]
    tenants_file = run_dir / "tenants.json"
    tenants_file.write_text(json.dumps({"tenants": tenants}))
    config = {**trainer_settings(base, run_dir, args), "tenantsFile": str(tenants_file)}
    names = {job["name"] for job in jobs}
    steps = 0

    def follow(event: dict[str, Any]) -> bool:
        nonlocal steps
        if event["event"] != "tenants" or "tenants" not in event:
            return False
        phases = {state["name"]: state.get("phase") for state in event["tenants"]}
        failed = [name for name, phase in phases.items() if phase == "Failed"]
        if failed:
            raise SystemExit(f"warm tenants failed in {run_dir}: {failed}")
        if all(phases.get(name) == "Succeeded" for name in names):
            steps = max(int(state.get("step", 0)) for state in event["tenants"])
            return True
        return False

    timing = spawn_trainer(config, run_dir, follow)
    check_published(jobs)
    return Timing(timing.wall, timing.startup, steps)


def trainer_settings(base: Path, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "baseModel": str(base),
        "checkpointUri": (run_dir / "checkpoints").as_uri(),
        "progressEverySteps": args.steps,
        "device": args.device,
        **({"threads": args.threads} if args.threads else {}),
    }


def spawn_trainer(config: dict[str, Any], run_dir: Path, done: Callable[[dict[str, Any]], bool]) -> Timing:
    """Run `loraplex trainer` on `config`; the time is spawn to exit, or to the first event `done`
    accepts (the process is then stopped with SIGTERM). Startup: spawn to the first `started` event."""
    path = run_dir / "job.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    started = None
    ended = None
    with subprocess.Popen(
        [sys.executable, "-m", "loraplex.cli", "trainer", "--config", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] == "started" and started is None:
                started = time.perf_counter()
            if ended is None and done(event):
                ended = time.perf_counter()
                process.send_signal(signal.SIGTERM)
        code = process.wait()
    wall = (ended or time.perf_counter()) - start
    if ended is None and code != 0:
        raise SystemExit(f"trainer exited {code} in {run_dir}")
    return Timing(wall, (started or start) - start, 0)


def check_published(jobs: list[dict[str, Any]]) -> None:
    for job in jobs:  # each output must be a published adapter
        out = Path(job["outputUri"].removeprefix("file://"))
        if not out.is_dir() or not any(out.iterdir()):
            raise SystemExit(f"nothing published for {job['name']}")


def best_of(
    repeat: int,
    base: Path,
    jobs: Callable[[Path], list[dict[str, Any]]],
    run_dir: Path,
    args: argparse.Namespace,
    run: Callable[[Path, list[dict[str, Any]], Path, argparse.Namespace], Timing] = run_trainer,
) -> Timing:
    """The fastest of `repeat` identical runs (fresh folders each), as timeit takes the minimum."""
    runs = [run(base, jobs(run_dir / f"try-{k}"), run_dir / f"try-{k}", args) for k in range(repeat)]
    return min(runs, key=lambda t: t.wall)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="Tiny model on CPU (a few minutes).")
    parser.add_argument(
        "--model", choices=sorted(SHAPES), help="Base model shape (default: tiny with --quick)."
    )
    parser.add_argument("--counts", default="1,2,4,8", help="Adapter counts N (default: 1,2,4,8).")
    parser.add_argument("--steps", type=int, help="Optimizer steps per adapter.")
    parser.add_argument("--batch-size", type=int, help="Examples per adapter per step.")
    parser.add_argument("--seq-len", type=int, help="Tokens per example.")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch CPU threads per trainer.")
    parser.add_argument(
        "--repeat", type=int, help="Runs per measurement, fastest kept (default: 2 with --quick)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    args = parser.parse_args()
    shape = args.model or ("tiny" if args.quick else "1b")
    defaults = {"tiny": (100, 8, 64), "small": (100, 8, 256), "1b": (100, 8, 256)}[shape]
    args.steps = args.steps or defaults[0]
    args.batch_size = args.batch_size or defaults[1]
    args.seq_len = args.seq_len or defaults[2]
    counts = [int(n) for n in args.counts.split(",")]
    repeat = args.repeat or (2 if args.quick else 1)
    if args.quick and not args.threads:
        # On a small shared CPU, torch's OpenMP threads stall each other whenever another process
        # takes a core (10x slower steps, seen here); one thread per trainer keeps timings sane.
        args.threads = 1

    base = build_base(shape)
    work = Path(tempfile.mkdtemp(prefix="loraplex-bench-training-"))
    data = work / "data"
    data.mkdir()
    for index in range(max(counts)):
        write_dataset(data / f"{index}.jsonl", index, examples=256, words=args.seq_len)
    print(
        f"model={shape} steps={args.steps} batch_size={args.batch_size} seq_len={args.seq_len} "
        f"device={args.device} threads={args.threads or 'default'} lora_rank=16 "
        f"targets={','.join(TARGETS)} repeat={repeat}",
        flush=True,
    )
    ratio = warm_ratio = 0.0
    singles: list[Timing] = []  # single-adapter job i, run once; the baseline for N is jobs 0..N-1 in a row
    try:
        for n in counts:

            def jobs(run_dir: Path, n: int = n) -> list[dict[str, Any]]:
                return [adapter_job(i, data, run_dir, args) for i in range(n)]

            concurrent = best_of(repeat, base, jobs, work / f"n{n}-concurrent", args)
            warm = best_of(repeat, base, jobs, work / f"n{n}-warm", args, run=run_warm)
            for i in range(len(singles), n):
                singles.append(
                    best_of(
                        repeat,
                        base,
                        functools.partial(one_job, i, data, args),
                        work / f"single-{i}",
                        args,
                    )
                )
            sequential = singles[:n]
            seq_wall = sum(t.wall for t in sequential)
            seq_train = sum(t.wall - t.startup for t in sequential)
            conc_rate = n / concurrent.wall * 3600
            warm_rate = n / warm.wall * 3600
            seq_rate = n / seq_wall * 3600
            ratio = conc_rate / seq_rate
            warm_ratio = warm_rate / seq_rate
            train_ratio = seq_train / (concurrent.wall - concurrent.startup)
            print(
                f"n={n} concurrent_adapters_per_hour={conc_rate:.0f} "
                f"sequential_adapters_per_hour={seq_rate:.0f} ratio={ratio:.2f} "
                f"train_only_ratio={train_ratio:.2f} "
                f"warm_adapters_per_hour={warm_rate:.0f} warm_ratio={warm_ratio:.2f} "
                f"concurrent_s={concurrent.wall:.1f} (startup {concurrent.startup:.1f}) "
                f"warm_s={warm.wall:.1f} (startup {warm.startup:.1f}) "
                f"sequential_s={seq_wall:.1f} (startup {sum(t.startup for t in sequential):.1f})",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"ratio_at_{counts[-1]}={ratio:.2f} warm_ratio_at_{counts[-1]}={warm_ratio:.2f}")


if __name__ == "__main__":
    main()
