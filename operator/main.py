"""`loraplex operator`: configures kopf and runs the handlers until stopped.

kopf's own bookkeeping (finalizer, handler progress, last-handled spec) lives
under our API group (`loraplex.dev/...`). Peering is mandatory, so two replicas
never act at once: the one with the lower priority pauses while the other runs.

Index functions (operator/indexes.py) and the per-event adapter check are `async def` although they
never await: kopf runs a sync one in its thread pool, a thread hop per watch
event, which during a 10,000-adapter bulk apply costs more than the work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import closing
from typing import Any

import kopf
from prometheus_client import start_http_server

from loraplex.api import GROUP
from loraplex.kube import api_client
from loraplex.operator import adapter_handlers, basemodel_handlers, indexes, placement_loop, training_handlers
from loraplex.operator.apply import Applier
from loraplex.operator.fleet_scale import FleetTargets
from loraplex.operator.peering import ensure_peering_objects
from loraplex.operator.settings import OperatorSettings


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    configured = kopf.OperatorSettings()
    configured.persistence.finalizer = f"{GROUP}/finalizer"
    configured.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    configured.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    configured.peering.name = settings.peering_name
    configured.peering.priority = settings.peering_priority
    configured.peering.lifetime = settings.peering_lifetime_seconds  # kopf renews it 5-10 s before it ends
    configured.peering.mandatory = True
    configured.posting.level = logging.WARNING  # Events for warnings and errors only
    configured.watching.server_timeout = 300
    configured.execution.max_workers = 8
    return configured


# Handlers that run on every watch event or every few seconds: their success is not news (the
# adapter check alone logged 20,000 lines, two per adapter, in a 10,000-adapter bulk apply).
ROUTINE_HANDLERS = ("check", "fleet-status", "recheck-adapters", "training", "training-created")


class QuietRoutine(logging.Filter):
    """Drops kopf's "Timer/Handler '<id>' succeeded." lines for the routine handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.endswith(f"'{name}' succeeded.") for name in ROUTINE_HANDLERS)


@dataclasses.dataclass(frozen=True)
class NamedConnection(kopf.ConnectionInfo):
    """kopf's connection, sending `User-Agent: <field manager>`.

    kopf sets no fieldManager on its patches (finalizers, BaseModel status, the status of an
    invalid adapter), so the apiserver names them after the User-Agent, kopf's own by default; this
    makes them the operator's, as the same User-Agent does for its Kubernetes client's writes.
    """

    field_manager: str = "loraplex-operator"

    def as_http_headers(self) -> dict[str, str]:
        return {**super().as_http_headers(), "User-Agent": self.field_manager}


def login_as(
    field_manager: str, environ: Mapping[str, str] = os.environ
) -> Callable[..., kopf.ConnectionInfo | None]:
    """A kopf login handler: in a pod the service account, elsewhere $KUBECONFIG or ~/.kube/config."""

    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kopf.login_with_service_account(**kwargs)
        server = in_cluster_server(environ) if info is not None else None
        info = info or kopf.login_with_kubeconfig(**kwargs)
        if info is None:
            return None
        fields = {field.name: getattr(info, field.name) for field in dataclasses.fields(info)}
        fields["server"] = server or fields["server"]
        return NamedConnection(**fields, field_manager=field_manager)

    return login


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The apiserver's address the kubelet gives every pod, as client-go's in-cluster config uses it.

    kopf's service-account login names `kubernetes.default.svc`, which needs cluster DNS; the
    Service's address from the environment works wherever the pod can reach the apiserver at all.
    """
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def run(settings: OperatorSettings) -> int:
    """Run the operator in this process; returns when it is stopped."""
    kopf.configure(verbose=False)
    logging.getLogger("kopf.objects").addFilter(QuietRoutine())
    start_http_server(settings.metrics_port)
    with closing(api_client()) as api:
        # The apiserver names a write's field manager after the User-Agent when the write names none.
        api.user_agent = settings.field_manager
        ensure_peering_objects(api, settings)
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(login_as(settings.field_manager))
        applier = Applier(api, settings.field_manager)
        targets = FleetTargets()  # worker counts the placement loops decide, read by the others
        indexes.register(registry)  # every index, once: the handlers read them through indexes.Indexes
        basemodel_handlers.register(registry, settings, api, applier, targets)
        adapter_handlers.register(registry, api)
        placement_loop.register(registry, settings, api, applier, targets)
        training_handlers.register(registry, settings, api, applier, targets)
        asyncio.run(
            kopf.operator(
                registry=registry,
                settings=kopf_settings(settings),
                standalone=False,
                peering_name=settings.peering_name,
                priority=settings.peering_priority,
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
                liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
            )
        )
    return 0
