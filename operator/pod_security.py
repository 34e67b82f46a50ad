"""The security settings every pod the operator writes shares, so each passes the `restricted` standard.

Worker, router and trainer pods run as the unprivileged uid and gid 65532
(distroless's `nonroot`), with the runtime's default seccomp profile, no
privilege escalation and no Linux capabilities: the `restricted` level of the
Kubernetes Pod Security Standards. Their volumes are group-owned by 65532
(`fsGroup`). A container whose image expects a writable home (vLLM's image
runs as root by default, the trainer's libraries keep caches there) gets one
on an emptyDir (`writable_home`). Pure functions of plain data.
"""

from __future__ import annotations

from typing import Any

Manifest = dict[str, Any]

RUN_AS = 65532  # uid and gid of every container the operator runs


def pod_security_context() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        # Re-own a volume only when its root is not 65532's: a large model PVC is not walked each start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def restricted(pod_spec: Manifest) -> Manifest:
    """`pod_spec` with the pod's and each of its (init) containers' security context set, in place."""
    pod_spec["securityContext"] = pod_security_context()
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        container["securityContext"] = container_security_context()
    return pod_spec


def writable_home(volume: str, path: str) -> tuple[Manifest, Manifest, list[Manifest]]:
    """(pod volume, container mount, container env) giving a container a writable HOME and cache at `path`."""
    env = [
        {"name": "HOME", "value": path},
        {"name": "XDG_CACHE_HOME", "value": f"{path}/.cache"},
    ]
    return {"name": volume, "emptyDir": {}}, {"name": volume, "mountPath": path}, env


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # where API clients look in a pod
# The lifetime the kubelet's own token volume asks for: the API server treats it as that volume's.
TOKEN_SECONDS = 3607


def service_account_token(volume: str) -> tuple[Manifest, Manifest]:
    """(pod volume, container mount) giving one container the pod's ServiceAccount token, CA and
    namespace where the kubelet's own token volume would put them, for a pod that mounts no token
    (`automountServiceAccountToken: false`) so that its other containers get none."""
    sources = [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {
            "downwardAPI": {
                "items": [
                    {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
                ]
            }
        },
    ]
    projected = {"name": volume, "projected": {"defaultMode": 0o444, "sources": sources}}
    return projected, {"name": volume, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}
