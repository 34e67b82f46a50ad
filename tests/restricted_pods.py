"""The `restricted` Pod Security Standard as a pure check of a pod spec, for unit and real-kubelet tests.

`restricted_violations(pod_spec)` lists what keeps a pod spec (a plain dict,
camelCase, as the API takes it) from the baseline and restricted levels of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy
version "latest"); an empty list means Pod Security Admission at
`enforce: restricted` admits it.
"""

from __future__ import annotations

from typing import Any

RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
    "secret",
}  # fmt: skip
ADDABLE_CAPABILITIES = {"NET_BIND_SERVICE"}
SECCOMP_ALLOWED = {"RuntimeDefault", "Localhost"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in `pod` (a pod spec) breaks the restricted Pod Security Standard; empty when nothing does."""
    found: list[str] = []
    pod_context = pod.get("securityContext") or {}
    containers = all_containers(pod)
    contexts = {c["name"]: c.get("securityContext") or {} for c in containers}

    # Baseline.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"pod: {field} is true")
    for where, context in [("pod", pod_context), *contexts.items()]:
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{where}: windowsOptions.hostProcess is true")
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append(f"{where}: seLinuxOptions {selinux}")
        apparmor = (context.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            found.append(f"{where}: appArmorProfile {apparmor}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            found.append(f"volume {volume['name']}: hostPath")
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: type {sorted(kinds - RESTRICTED_VOLUMES)} not allowed")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"pod: sysctl {sysctl['name']}")
    for container in containers:
        name, context = container["name"], contexts[container["name"]]
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount {context['procMount']}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{name}: hostPort")

    # Restricted.
    pod_non_root = pod_context.get("runAsNonRoot") is True
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_ALLOWED:
        found.append(f"pod: seccompProfile {pod_seccomp}")
    if pod_context.get("runAsUser") == 0:
        found.append("pod: runAsUser 0")
    for container in containers:
        name, context = container["name"], contexts[container["name"]]
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            found.append(f"{name}: runAsNonRoot is not true (on the pod or the container)")
        if context.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_ALLOWED:
            found.append(f"{name}: seccompProfile {seccomp}")
        if seccomp is None and pod_seccomp is None:
            found.append(f"{name}: no seccompProfile (on the pod or the container)")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities do not drop ALL")
        added = set(capabilities.get("add", [])) - ADDABLE_CAPABILITIES
        if added:
            found.append(f"{name}: adds capabilities {sorted(added)}")
    return found
