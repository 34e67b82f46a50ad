"""One pod volume per PersistentVolumeClaim, however many mounts read it.

A BaseModel's model, its adapters and a TrainingJob's data and store may all
live in one claim (the local fleet's `loraplex-store`, say). Each is built as
its own pod volume, but the kubelet sets up one volume per claim and a pod
that names the same claim in two volumes never starts (its volumes time out).
`merge_claim_volumes` keeps the first volume of each claim, points every mount
of the others at it, and mounts the claim read-write only when some mount
writes. Pure: it rewrites plain pod-spec data in place.
"""

from __future__ import annotations

from typing import Any

Manifest = dict[str, Any]


def merge_claim_volumes(pod_spec: Manifest) -> Manifest:
    """`pod_spec` with each claim in one volume (mounts renamed to it), in place; returns it."""
    kept: dict[str, Manifest] = {}  # claim -> the volume kept for it
    renamed: dict[str, str] = {}  # dropped volume name -> kept volume name
    volumes = []
    for volume in pod_spec.get("volumes", []):
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim is None:
            volumes.append(volume)
        elif claim in kept:
            renamed[volume["name"]] = kept[claim]["name"]
            if not volume["persistentVolumeClaim"].get("readOnly", False):
                kept[claim]["persistentVolumeClaim"]["readOnly"] = False
        else:
            kept[claim] = volume
            volumes.append(volume)
    if not renamed:
        return pod_spec
    pod_spec["volumes"] = volumes
    for container in [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
    return pod_spec
