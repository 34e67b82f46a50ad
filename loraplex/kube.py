"""Kubernetes client helpers: a typed ApiClient (from a kubeconfig, else in-cluster), and list-then-watch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

log = logging.getLogger("loraplex.kube")


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient for the kubeconfig's current context (default: $KUBECONFIG or
    ~/.kube/config), or the pod's service account when there is none; close it when done."""
    try:
        return cast(client.ApiClient, config.new_client_from_config(config_file=kubeconfig))  # type: ignore[no-untyped-call]
    except ConfigException:
        if kubeconfig is not None:
            raise
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def list_and_watch(
    what: str,
    list_fn: Callable[..., Any],
    on_listed: Callable[[list[dict[str, Any]]], object],
    on_event: Callable[[str, dict[str, Any]], object],
    stop: threading.Event,
    serialize: Callable[[Any], Any],
    **selectors: str,
) -> None:
    """List, then watch from the list's resourceVersion, until `stop` is set (blocking: run it in a thread).

    `on_listed` gets every object of each (re-)listing, `on_event` each watch event (type, object), all
    as plain dicts. When the watch ends, reports an ERROR (such as 410 Gone) or breaks, it lists again.
    """
    while not stop.is_set():
        try:
            listing = serialize(list_fn(**selectors))
            on_listed(listing.get("items") or [])
            version = (listing.get("metadata") or {}).get("resourceVersion")
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                list_fn, resource_version=version, timeout_seconds=60, **selectors
            )
            for event in stream:
                if stop.is_set():
                    return
                if event.get("type") == "ERROR":
                    break
                on_event(event["type"], serialize(event["object"]))
        except ApiException as error:
            if error.status != 410:
                log.warning("Watch of %s failed (%s); listing again in 1 s", what, error.reason)
                stop.wait(1.0)
        except Exception as error:  # the API server restarting, a dropped connection
            log.warning("Watch of %s broke (%s); listing again in 1 s", what, error)
            stop.wait(1.0)
