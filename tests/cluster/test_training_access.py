"""What a TrainingJob may make its trainer pod read, and that the pod holds no token, on the real apiserver.

Real kube-apiserver (its RBAC authorizer answers the SubjectAccessReviews), scheduler and Job controller;
KWOK GPU nodes. The operator runs with the dataset roots an admin would set (`file:///data`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.e2e.chart import chart_applied
from loraplex.e2e.cluster import LocalCluster
from loraplex.e2e.objects import create_object
from loraplex.e2e.operator_process import OperatorProcess
from loraplex.e2e.service_account import service_account_kubeconfig
from loraplex.e2e.trainer_pods import trainer_pods
from loraplex.e2e.waiting import wait_until

pytestmark = pytest.mark.cluster


def training_job(uri: str) -> dict[str, Any]:
    return {
        "baseModel": "bm",
        "dataset": {"uri": uri},
        "output": {"adapterName": "out"},
        "training": {"steps": 10},
        "resources": {"gpu": 1},
        "sharing": "dedicated",  # a trainer pod per attempt (warm trainers: test_warm_trainers.py)
    }


def status(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    body: Any = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingjobs", name
    )
    return body.get("status") or {}


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})


def allowed(
    kube: Any,
    namespace: str,
    account: str,
    verb: str,
    resource: str,
    name: str,
    sub: str = "",
    group: str = "",
) -> bool:
    """The apiserver's answer: may ServiceAccount `account` do `verb` on `resource[/sub]` `name`?"""
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{namespace}:{account}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace,
                group=GROUP if resource.startswith("training") else group,
                resource=resource,
                subresource=sub or None,
                verb=verb,
                name=name,
            ),
        )
    )
    answer: Any = client.AuthorizationV1Api(kube).create_subject_access_review(review)
    return bool(answer.status.allowed)


def test_a_dataset_outside_the_roots_fails_the_job_before_any_pod(
    kube: Any, namespace: str, trainer_operator: OperatorProcess
) -> None:
    create_object(kube, namespace, "basemodels", "BaseModel", "bm", {"model": {"uri": "/models/tiny"}})
    # Admitted by the CRD (no system folder), but under no root the operator was given.
    create_object(
        kube, namespace, "trainingjobs", "TrainingJob", "outside", training_job("file:///srv/x.jsonl")
    )
    seen = wait_until(
        lambda: (s := status(kube, namespace, "outside")).get("phase") == "Failed" and s, 30, "the job failed"
    )
    assert ready(seen)["reason"] == "DatasetOutsideRoots"
    assert "file:///data" in ready(seen)["message"]
    jobs = client.BatchV1Api(kube).list_namespaced_job(namespace).items
    assert jobs == []
    assert trainer_pods(kube, namespace, "outside") == []


def test_a_trainer_pod_holds_no_token_and_only_the_store_keys_as_files(
    kube: Any, namespace: str, trainer_operator: OperatorProcess
) -> None:
    base = {"model": {"uri": "/models/tiny"}, "adapterStoreSecretRef": {"name": "store-keys"}}
    create_object(kube, namespace, "basemodels", "BaseModel", "bm", base)
    create_object(
        kube, namespace, "trainingjobs", "TrainingJob", "mine", training_job("file:///data/x.jsonl")
    )
    pod = wait_until(lambda: next(iter(trainer_pods(kube, namespace, "mine")), None), 60, "a trainer pod")
    # As the apiserver admitted it (its ServiceAccount admission adds a token volume to any pod that
    # asks for one): the namespace's default account, and no token mounted.
    assert pod.spec.automount_service_account_token is False
    assert pod.spec.service_account_name == "default"
    projected = [s for v in pod.spec.volumes if v.projected for s in v.projected.sources]
    assert not [s for s in projected if s.service_account_token is not None]
    (trainer,) = pod.spec.containers
    assert not [m for m in trainer.volume_mounts if m.mount_path.startswith("/var/run/secrets/kubernetes")]
    assert not [e for e in trainer.env or [] if e.name == "KUBECONFIG"]
    assert not trainer.env_from  # no Secret poured into the environment
    secrets = [v.secret for v in pod.spec.volumes if v.secret is not None]
    assert [s.secret_name for s in secrets] == ["store-keys"]
    assert {item.key for item in secrets[0].items} == {
        "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
    }  # fmt: skip
    # No account, Role or binding of its own (the BaseModel's worker and router have theirs): nothing a
    # token could be had for.
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)

    def accounts() -> set[str]:
        return {a.metadata.name for a in core.list_namespaced_service_account(namespace).items}

    def bound() -> set[str]:
        return {s.name for b in rbac.list_namespaced_role_binding(namespace).items for s in b.subjects or []}

    # The BaseModel's own are made by its reconcile, which may come after the trainer's admission.
    wait_until(lambda: {"bm-worker", "bm-router"} <= accounts() and {"bm-worker", "bm-router"} <= bound(),
               60, "the BaseModel's ServiceAccounts and bindings")  # fmt: skip
    assert accounts() == {"default", "bm-worker", "bm-router"}
    assert rbac.list_namespaced_role(namespace).items == []
    assert bound() == {"bm-worker", "bm-router"}


def test_the_operator_starts_a_trainer_with_only_the_charts_rbac_and_may_not_grant_roles(
    local_cluster: LocalCluster, kube: Any, namespace: str, tmp_path: Path, training_env: None
) -> None:
    """No Role creation, and the trainer's log (its progress) is within what the chart gives the operator."""
    with chart_applied(local_cluster, namespace):
        kubeconfig = service_account_kubeconfig(
            local_cluster.kubeconfig, namespace, "loraplex-operator", tmp_path / "sa-kubeconfig.yaml"
        )
        operator = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log").start()
        try:
            create_object(
                kube, namespace, "basemodels", "BaseModel", "bm", {"model": {"uri": "/models/tiny"}}
            )
            create_object(
                kube, namespace, "trainingjobs", "TrainingJob", "tj", training_job("file:///data/x.jsonl")
            )
            pod = wait_until(
                lambda: next(
                    (p for p in trainer_pods(kube, namespace, "tj") if p.status.phase == "Running"), None
                ),
                60,
                "the trainer pod running under chart RBAC",
            )
            wait_until(
                lambda: (
                    (status(kube, namespace, "tj").get("placement") or {}).get("pod") == pod.metadata.name
                ),
                30,
                "a pass over the running pod (its log read)",
            )
            account = "loraplex-operator"
            assert allowed(kube, namespace, account, "get", "pods", pod.metadata.name, "log")
            assert not allowed(
                kube, namespace, account, "create", "roles", "", group="rbac.authorization.k8s.io"
            )
            assert client.RbacAuthorizationV1Api(kube).list_namespaced_role(namespace).items == []
            assert "orbidden" not in operator.log()
        finally:
            operator.stop()
