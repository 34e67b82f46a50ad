"""`loraplex router`: the router of one BaseModel, its flags, and the process that runs it.

Cluster mode (what the operator's Deployment runs): `--base-model`,
`--namespace`, `--port`; residency from WorkerPlacements,
workers from the StatefulSet's pods. Static mode (local runs):
`--workers name=vllm_url,agent_url ...` or `--workers-file workers.yaml`;
residency from each agent's `/v1/residency`. In both, load and liveness come
from each worker's vLLM `/metrics`. The vLLM API key comes from
LORAPLEX_VLLM_API_KEY; other settings from LORAPLEX_ROUTER_* (docs/router.md).
Callers authenticate with API keys (`--api-keys-dir`) and / or OIDC tokens
(`--oidc-issuer`); who may use what comes from LORAPLEX_ROUTER_ACCESS (set by
the operator) or `--access-file`, and from each LoRAAdapter's `spec.access`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import aiohttp
from aiohttp import web

from loraplex.router.api_keys import ApiKeyStore
from loraplex.router.auth import Authenticator
from loraplex.router.decision import make_router
from loraplex.router.kube_source import KubeSource
from loraplex.router.load import LoadPoller
from loraplex.router.metrics import RouterMetrics
from loraplex.router.oidc import OidcSettings, OidcVerifier
from loraplex.router.proxy import Proxy, make_app
from loraplex.router.settings import RouterSettings, load_access_file, load_workers_file, parse_workers
from loraplex.router.state import FleetState
from loraplex.router.static_source import StaticSource
from loraplex.shutdown import stop_event

log = logging.getLogger("loraplex.router")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=run)
    parser.add_argument("--base-model", required=True, help="The BaseModel this router serves.")
    parser.add_argument(
        "--served-model-name", help="The name clients use for the base model (default: --base-model)."
    )
    parser.add_argument("--namespace", help="Namespace of the BaseModel's workers (cluster mode).")
    parser.add_argument("--host", default="0.0.0.0", help="Address to listen on (default: all).")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000).")
    parser.add_argument(
        "--workers",
        nargs="+",
        metavar="NAME=VLLM_URL,AGENT_URL",
        help="Static mode: these workers, residency from their agents.",
    )
    parser.add_argument(
        "--workers-file", type=Path, help="Static mode: a YAML list of {name, vllmUrl, agentUrl}."
    )
    parser.add_argument("--kubeconfig", help="Kubeconfig (default: in-cluster, then ~/.kube/config).")
    auth = parser.add_argument_group(
        "authentication", "Without --api-keys-dir or --oidc-issuer every caller is anonymous."
    )
    auth.add_argument(
        "--api-keys-dir",
        dest="api_key_dirs",
        type=Path,
        action="append",
        metavar="DIR",
        help="A folder of hashed API keys, one entry per file (a mounted Secret); re-read when it changes. "
        "Repeatable.",
    )
    auth.add_argument("--oidc-issuer", help="Accept JWT bearer tokens from this OIDC issuer (its `iss`).")
    auth.add_argument(
        "--oidc-audience", action="append", metavar="AUD", help="An audience tokens must name (repeatable)."
    )
    auth.add_argument("--oidc-jwks-uri", help="The issuer's JWKS (default: from its OpenID configuration).")
    auth.add_argument("--oidc-subject-claim", default="sub", help="Claim with the subject (default: sub).")
    auth.add_argument(
        "--oidc-groups-claim", default="groups", help="Claim with the groups (default: groups)."
    )
    parser.add_argument(
        "--access-file",
        type=Path,
        help="Who may use the base model, the catalog and each adapter (YAML; static mode, docs/router.md).",
    )


def settings_from_args(args: argparse.Namespace) -> RouterSettings:
    workers = parse_workers(args.workers or ())
    if args.workers_file is not None:
        workers += load_workers_file(args.workers_file)
    oidc = None
    if args.oidc_issuer:
        if not args.oidc_audience:
            raise ValueError("--oidc-issuer needs at least one --oidc-audience")
        oidc = OidcSettings(
            args.oidc_issuer,
            tuple(args.oidc_audience),
            args.oidc_jwks_uri,
            args.oidc_subject_claim,
            args.oidc_groups_claim,
        )
    return RouterSettings.from_env(
        api_key_dirs=tuple(args.api_key_dirs or ()) or None,
        oidc=oidc,
        access=load_access_file(args.access_file) if args.access_file else None,
        base_model=args.base_model,
        served_model_name=args.served_model_name,
        namespace=args.namespace,
        host=args.host,
        port=args.port,
        static_workers=workers or None,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except (ValueError, OSError) as error:
        log.error("Refused the router's settings: %s", error)
        return 2
    if not settings.static and not settings.namespace:
        log.error("Refused the router's settings: give --namespace (cluster mode) or --workers (static mode)")
        return 2
    asyncio.run(serve(settings, kubeconfig=args.kubeconfig))
    return 0


async def serve(
    settings: RouterSettings, ready: asyncio.Event | None = None, kubeconfig: str | None = None
) -> None:
    """Run the router until SIGTERM / SIGINT (or until cancelled)."""
    router = make_router(settings.routing)
    table = router.table
    state = FleetState(table, stale_after=settings.stale_after_seconds)
    metrics = RouterMetrics(settings.base_model, settings.principal_labels, settings.adapter_labels)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        keys = ApiKeyStore(settings.api_key_dirs) if settings.api_key_dirs else None
        if keys is not None:
            keys.reload()
        oidc = OidcVerifier(settings.oidc) if settings.oidc is not None else None
        proxy = Proxy(
            settings, state, router, metrics, session,
            authenticator=Authenticator(keys, oidc),
        )  # fmt: skip
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        poller = LoadPoller(
            state,
            session,
            settings.load_interval_seconds,
            headers,
            max_num_seqs=settings.routing.max_num_seqs,
        )
        source: StaticSource | KubeSource
        if settings.static:
            source = StaticSource(
                state, session, settings.static_workers, settings.residency_interval_seconds
            )
        else:
            assert settings.namespace is not None
            source = KubeSource(
                state,
                settings.namespace,
                settings.base_model,
                settings.vllm_port,
                settings.agent_port,
                kubeconfig=kubeconfig,
            )
        runner = web.AppRunner(make_app(proxy), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port).start()
        log.info(
            "Started router of %s on %s:%d (%s mode, authentication: %s)",
            settings.base_model,
            settings.host,
            settings.port,
            "static" if settings.static else "cluster",
            "+".join(n for n, on in (("api-keys", keys), ("oidc", oidc)) if on) or "none",
        )
        tasks = [asyncio.create_task(source.run()), asyncio.create_task(poller.run())]
        if keys is not None:
            tasks.append(asyncio.create_task(keys.run(settings.api_keys_reload_seconds)))
        stop = stop_event()
        if ready is not None:
            ready.set()
        try:
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            if isinstance(source, KubeSource):
                source.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()
            log.info("Stopped router of %s", settings.base_model)
