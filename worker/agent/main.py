"""`loraplex agent`: the worker agent's entry point, and its `fetch-model` / `digest` helpers.

Settings come from flags (the worker StatefulSet passes them, see
operator/fleet.py) and from the environment: LORAPLEX_VLLM_API_KEY (the
worker's vLLM key), POD_NAME / POD_NAMESPACE (which WorkerPlacement to
follow), and the adapter store's credentials (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) from the BaseModel's store Secret.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from loraplex.worker.agent.activity import DEFAULT_ACTIVE_WINDOW, DEFAULT_ACTIVITY_INTERVAL
from loraplex.worker.agent.residency import DEFAULT_RETIRE_AFTER

GIB = 1 << 30


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=run)
    parser.add_argument(
        "--base-model", default=os.environ.get("LORAPLEX_BASE_MODEL"), help="The BaseModel served."
    )
    parser.add_argument("--vllm-url", default="http://127.0.0.1:8000", help="This worker's vLLM server.")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("/var/cache/loraplex"), help="Local disk tier."
    )
    parser.add_argument(
        "--disk-budget-bytes",
        type=int,
        default=20 * GIB,
        help="Byte budget of the disk tier (default: 20 GiB).",
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="HTTP port for /v1/residency, /metrics (8080)."
    )
    parser.add_argument("--host", default="0.0.0.0", help="Address to listen on (default: all).")
    parser.add_argument("--max-loras", type=int, default=4, help="vLLM --max-loras: GPU slots.")
    parser.add_argument("--max-cpu-loras", type=int, default=16, help="vLLM --max-cpu-loras: CPU slots.")
    parser.add_argument("--catalog-template", help="Adapter catalog URI template with '{adapter}'.")
    parser.add_argument(
        "--base-model-dir",
        type=Path,
        default=os.environ.get("LORAPLEX_BASE_MODEL_DIR"),
        help="The base model's folder (as vLLM loads it): adapters whose target modules it lacks are "
        "refused (TargetModulesNotInBase). Unset or unreadable: not checked.",
    )
    parser.add_argument(
        "--pvc-root", type=Path, default=Path("/mnt/pvc"), help="Where pvc://<claim> is mounted."
    )
    parser.add_argument("--fetch-concurrency", type=int, default=4, help="Concurrent adapter fetches.")
    parser.add_argument(
        "--active-window",
        type=float,
        default=DEFAULT_ACTIVE_WINDOW,
        help="Seconds since vLLM ran it (or a router ensured it) that an adapter counts as active (300).",
    )
    parser.add_argument(
        "--activity-interval",
        type=float,
        default=DEFAULT_ACTIVITY_INTERVAL,
        help="Seconds between reads of vLLM's adapter activity from its /metrics (10).",
    )
    parser.add_argument(
        "--retire-after",
        type=float,
        default=DEFAULT_RETIRE_AFTER,
        help="Seconds a replaced revision of an adapter stays registered in vLLM after a report naming "
        f"the new one is out, so routers have moved to it ({DEFAULT_RETIRE_AFTER:g}).",
    )
    parser.add_argument("--worker", default=os.environ.get("POD_NAME"), help="Worker (pod) name.")
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"), help="Worker namespace.")
    parser.add_argument("--kubeconfig", help="Kubeconfig (default: in-cluster, then ~/.kube/config).")
    parser.add_argument(
        "--wanted-file",
        type=Path,
        help="Read the wanted adapters from this file instead of the WorkerPlacement.",
    )
    actions = parser.add_subparsers(dest="agent_command", metavar="ACTION")
    fetch_model = actions.add_parser(
        "fetch-model", help="Copy the base model into the worker (init container)."
    )
    fetch_model.add_argument("--uri", required=True, help="pvc://, https:// (tar archive) or s3:// (prefix).")
    fetch_model.add_argument("--dest", type=Path, required=True, help="Target directory.")
    fetch_model.set_defaults(handler=run_fetch_model)
    digest = actions.add_parser("digest", help="Print the adapter digest (sha256) of a directory.")
    digest.add_argument("directory", type=Path)
    digest.set_defaults(handler=run_digest)


def run_digest(args: argparse.Namespace) -> int:
    from loraplex.worker.digest import tree_digest

    if not args.directory.is_dir():
        print(f"{args.directory} is not a directory", file=sys.stderr)
        return 1
    print(tree_digest(args.directory))
    return 0


def run_fetch_model(args: argparse.Namespace) -> int:
    from loraplex.worker.agent.fetch import FetchError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    pvc_root = Path(os.environ.get("LORAPLEX_PVC_ROOT", "/mnt/pvc"))
    try:
        asyncio.run(_fetch_model_until_stopped(args.uri, args.dest, pvc_root))
    except FetchError as error:
        print(f"fetch-model failed ({error.reason}): {error.message}", file=sys.stderr)
        return 1
    return 0


async def _fetch_model_until_stopped(uri: str, dest: Path, pvc_root: Path) -> None:
    """Copy the base model; on SIGTERM (the pod is going away) drop the partial copy and exit at
    once with 143, as a container killed by SIGTERM does: a file's copy still running on a thread
    would otherwise hold the exit until it ends, and the next start copies again anyway."""
    from loraplex.shutdown import until_stopped
    from loraplex.worker.agent.model_fetch import fetch_model

    if await until_stopped(fetch_model(uri, dest, pvc_root=pvc_root)):
        print("fetch-model: stopped by a signal; the partial copy is removed", file=sys.stderr, flush=True)
        os._exit(143)


def read_base_modules(model_dir: Path | None) -> frozenset[str] | None:
    """The base model's module names, or None (logged) when there is no folder or it cannot be read."""
    from loraplex.worker.agent.base_modules import UnreadableBase, base_module_names

    if model_dir is None:
        return None
    log = logging.getLogger("loraplex.agent")
    try:
        modules = base_module_names(model_dir)
    except (UnreadableBase, OSError, ValueError) as error:
        log.warning("Skipped the target-module check of adapters: %s", error)
        return None
    log.info("Read the base model's modules dir=%s modules=%d", model_dir, len(modules))
    return modules


def run(args: argparse.Namespace) -> int:
    if not args.worker:
        print("loraplex agent: --worker (or POD_NAME) is required", file=sys.stderr)
        return 2
    if args.wanted_file is None and not args.namespace:
        print(
            "loraplex agent: --namespace (or POD_NAMESPACE) is required without --wanted-file",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))
    return 0


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from loraplex.shutdown import until_stopped
    from loraplex.worker.agent.agent import Agent
    from loraplex.worker.agent.disk_cache import DiskCache
    from loraplex.worker.agent.fetch import Fetcher
    from loraplex.worker.agent.http_api import make_app
    from loraplex.worker.agent.placement_source import FileSource, WorkerPlacementSource
    from loraplex.worker.agent.residency import Slots
    from loraplex.worker.agent.vllm_client import VllmClient

    cache = DiskCache(args.cache_dir, args.disk_budget_bytes)
    base_modules = await asyncio.to_thread(read_base_modules, args.base_model_dir)
    vllm = VllmClient(args.vllm_url, os.environ.get("LORAPLEX_VLLM_API_KEY"))
    agent = Agent(
        worker=args.worker,
        vllm=vllm,
        fetcher=Fetcher(cache, pvc_root=args.pvc_root, concurrency=args.fetch_concurrency),
        cache=cache,
        slots=Slots(gpu=args.max_loras, cpu=args.max_cpu_loras),
        catalog_template=args.catalog_template,
        active_window=args.active_window,
        activity_interval=args.activity_interval,
        base_modules=base_modules,
        retire_after=args.retire_after,
    )
    source: FileSource | WorkerPlacementSource
    if args.wanted_file is not None:
        source = FileSource(args.wanted_file, agent.set_wanted)
    else:
        from loraplex.kube import api_client
        from loraplex.worker.agent.adapter_lookup import LoRAAdapterLookup

        kube = api_client(args.kubeconfig)
        source = WorkerPlacementSource(kube, args.namespace, args.worker, agent.set_wanted)
        agent.on_report = source.report
        source.on_written = agent.reported
        if args.base_model:
            agent.adapter_lookup = LoRAAdapterLookup(kube, args.namespace, args.base_model)
    runner = web.AppRunner(make_app(agent), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    logging.getLogger("loraplex.agent").info(
        "Started agent of worker %s port=%d vllm=%s", args.worker, args.port, args.vllm_url
    )
    try:
        if await until_stopped(asyncio.gather(agent.run(), source.run())):
            logging.getLogger("loraplex.agent").info("Stopping agent of worker %s (signal)", args.worker)
    finally:
        await runner.cleanup()
        await vllm.close()
