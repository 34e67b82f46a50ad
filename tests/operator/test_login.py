"""The operator's login: in a pod it reaches the apiserver at the address the kubelet gives it."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from loraplex.operator.main import NamedConnection, in_cluster_server, login_as

IN_POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_in_a_pod_the_service_address_is_used_not_a_dns_name(monkeypatch: pytest.MonkeyPatch) -> None:
    account = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t", ca_path="/ca.crt")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: account)
    info = login_as("loraplex-operator", IN_POD)(logger=None)
    assert isinstance(info, NamedConnection)
    assert (info.server, info.token, info.ca_path) == ("https://10.96.0.1:443", "t", "/ca.crt")


def test_outside_a_pod_the_kubeconfig_server_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = kopf.ConnectionInfo(server="https://127.0.0.1:6443")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)
    monkeypatch.setattr(kopf, "login_with_kubeconfig", lambda **_: kubeconfig)
    info: Any = login_as("loraplex-operator", IN_POD)(logger=None)
    assert info.server == "https://127.0.0.1:6443"


def test_the_service_address_is_bracketed_for_ipv6_and_absent_without_the_variables() -> None:
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}) == (
        "https://[fd00::1]:443"
    )
    assert in_cluster_server({}) is None
