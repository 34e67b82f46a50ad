"""What one TrainingJob attempt runs: the trainer Job, a config the trainer accepts, the Kueue path."""

from __future__ import annotations

import yaml

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainer import STORE_CREDENTIAL_KEYS
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_workload import (
    KUEUE_QUEUE_LABEL,
    Store,
    TrainingJobRef,
    attempt_name,
    plan_attempt,
)
from loraplex.worker.trainer.config import TrainerConfig

REF = TrainingJobRef("sql-tune", "team", "uid-1", 3)
BASE = BaseModelSpec.model_validate(
    {"model": {"uri": "pvc://models/llama-8b"}, "nodeSelector": {"pool": "gpu"}}
)
SPEC = TrainingJobSpec.model_validate(
    {
        "baseModel": "llama-8b",
        "dataset": {"uri": "pvc://datasets/sql/train.jsonl"},
        "output": {"adapterName": "sql", "replicas": 2},
        "training": {"steps": 100},
        "resources": {"gpu": 2, "memory": "32Gi"},
    }
)
SETTINGS = OperatorSettings(
    training_store="pvc://store/loraplex",
    image="example/loraplex:1",
    trainer_image="example/trainer:1",
    training_dataset_roots=("pvc://datasets",),
)


def test_an_admitted_attempt_is_a_low_priority_job_pinned_to_its_node() -> None:
    config, job = plan_attempt(REF, SPEC, BASE, SETTINGS, attempt=2, node="gpu-7")
    assert job["metadata"]["name"] == config["metadata"]["name"] == "sql-tune-a2"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["suspend"] is False
    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "loraplex-trainer"
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"pool": "gpu", "kubernetes.io/hostname": "gpu-7"}
    container = pod["containers"][0]
    assert container["args"] == ["trainer", "--config", "/etc/loraplex/trainer.yaml"]
    assert container["image"] == "example/trainer:1"  # the trainer's own image
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {"/models", "/data", "/store", "/etc/loraplex", "/home/trainer"}
    assert pod["terminationGracePeriodSeconds"] > 25


def test_a_trainer_pulls_with_the_base_models_pull_secrets() -> None:
    base = BaseModelSpec.model_validate(
        {**BASE.model_dump(by_alias=True, exclude_none=True), "imagePullSecrets": [{"name": "regcred"}]}
    )
    _config, job = plan_attempt(REF, SPEC, base, SETTINGS, attempt=1, node="gpu-7")
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    _config, plain = plan_attempt(REF, SPEC, BASE, SETTINGS, attempt=1, node="gpu-7")
    assert "imagePullSecrets" not in plain["spec"]["template"]["spec"]


def test_the_config_is_one_the_trainer_accepts() -> None:
    config, _ = plan_attempt(REF, SPEC, BASE, SETTINGS, attempt=0, node="n")
    parsed = TrainerConfig.parse(yaml.safe_load(config["data"]["trainer.yaml"]))
    assert parsed.base_model == "/models/llama-8b"
    assert parsed.checkpoint_uri == "file:///store/loraplex/checkpoints/team/uid-1/g3"
    assert parsed.result_path == "/dev/termination-log"
    assert parsed.scratch_dir == "/home/trainer/scratch"  # in the pod's writable HOME (an emptyDir)
    (adapter,) = parsed.adapters
    assert adapter.name == "sql-tune"
    assert adapter.dataset.uri == "file:///data/sql/train.jsonl"
    assert adapter.output_uri == "file:///store/loraplex/adapters/team/sql"
    assert adapter.training == SPEC.training
    assert adapter.lora == SPEC.lora


def test_every_attempt_of_one_spec_resumes_the_same_checkpoint() -> None:
    first, _ = plan_attempt(REF, SPEC, BASE, SETTINGS, attempt=0, node="a")
    later, _ = plan_attempt(REF, SPEC, BASE, SETTINGS, attempt=5, node="b")
    assert first["data"] == later["data"]


def test_a_kueue_job_is_created_suspended_with_the_queue_label_and_no_node() -> None:
    spec = SPEC.model_copy(update={"queue_name": "team-a"})
    _, job = plan_attempt(REF, spec, BASE, SETTINGS, attempt=0, node=None)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    assert "kubernetes.io/hostname" not in job["spec"]["template"]["spec"]["nodeSelector"]


def test_published_paths_map_back_to_the_store_workers_read() -> None:
    store = Store.parse("pvc://store/loraplex")
    assert (
        store.public("file:///store/loraplex/adapters/team/sql/abc")
        == "pvc://store/loraplex/adapters/team/sql/abc"
    )
    assert Store.parse("file:///srv/store").public("file:///srv/store/x") == "file:///srv/store/x"
    s3 = Store.parse("s3://team-bucket/loraplex/")
    assert s3.claim is None  # nothing to mount: the trainer uploads with the store Secret's keys
    assert s3.public("s3://team-bucket/loraplex/adapters/x") == "s3://team-bucket/loraplex/adapters/x"


def test_long_names_stay_within_63_characters() -> None:
    long = TrainingJobRef("x" * 63, "ns", "u", 1)
    assert len(attempt_name(long, 12345)) <= 63
    assert attempt_name(long, 1) != attempt_name(TrainingJobRef("x" * 62 + "y", "ns", "u", 1), 1)


def test_a_trainer_pod_mounts_no_token_and_the_operator_makes_no_account_for_it() -> None:
    manifests = plan_attempt(REF, SPEC, BASE, SETTINGS, attempt=0, node="n")
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Job"]  # no ServiceAccount, Role, RoleBinding
    pod = manifests[1]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod  # the namespace's default account, and no token of it
    (trainer,) = pod["containers"]
    assert not [e for e in trainer["env"] if e["name"] in ("LORAPLEX_TRAININGJOB", "KUBECONFIG")]


def test_store_credentials_reach_the_trainer_as_files_of_the_keys_it_needs_only() -> None:
    base = BaseModelSpec.model_validate(
        {"model": {"uri": "s3://models/llama-8b/"}, "adapterStoreSecretRef": {"name": "store-keys"}}
    )
    _, job = plan_attempt(REF, SPEC, base, SETTINGS, attempt=0, node="n")
    pod = job["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    assert "envFrom" not in trainer
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "store-keys"
    assert {item["key"] for item in volume["secret"]["items"]} == set(STORE_CREDENTIAL_KEYS)
    (mount,) = [m for m in trainer["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert mount["readOnly"] is True
    assert env["LORAPLEX_STORE_CREDENTIALS_DIR"] == mount["mountPath"]


def test_the_trainer_runs_its_own_image_and_the_model_fetch_the_operators() -> None:
    base = BaseModelSpec.model_validate({"model": {"uri": "s3://models/llama-8b/"}})
    _, job = plan_attempt(REF, SPEC, base, SETTINGS, attempt=0, node="n")
    pod = job["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["initContainers"]] == ["example/loraplex:1"]
    assert [c["image"] for c in pod["containers"]] == ["example/trainer:1"]
    assert OperatorSettings.from_env({"POD_NAME": "a"}).trainer_image.startswith(
        "ghcr.io/loraplex/loraplex-trainer:"
    )


def test_a_pvc_dataset_mounts_only_its_roots_folder_read_only() -> None:
    settings = OperatorSettings(
        training_store="pvc://store/loraplex", training_dataset_roots=("pvc://datasets/sql", "pvc://datasets")
    )
    config, job = plan_attempt(REF, SPEC, BASE, settings, attempt=0, node="n")
    pod = job["spec"]["template"]["spec"]
    (data,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/data"]
    assert data["subPath"] == "sql"
    assert data["readOnly"] is True
    (adapter,) = TrainerConfig.parse(yaml.safe_load(config["data"]["trainer.yaml"])).adapters
    assert adapter.dataset.uri == "file:///data/train.jsonl"
    assert adapter.dataset_root == "/data"


def test_a_file_dataset_is_passed_normalized_with_its_root() -> None:
    spec = SPEC.model_copy(
        update={"dataset": SPEC.dataset.model_copy(update={"uri": "file:///srv/a//b.jsonl"})}
    )
    settings = OperatorSettings(
        training_store="pvc://store/loraplex", training_dataset_roots=("file:///srv",)
    )
    config, job = plan_attempt(REF, spec, BASE, settings, attempt=0, node="n")
    (adapter,) = TrainerConfig.parse(yaml.safe_load(config["data"]["trainer.yaml"])).adapters
    assert (adapter.dataset.uri, adapter.dataset_root) == ("file:///srv/a/b.jsonl", "/srv")
    mounts = {m["mountPath"] for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/data" not in mounts


def test_a_run_from_published_weights_names_the_revision_in_its_config() -> None:
    sha = "ab" * 32
    config, _ = plan_attempt(REF, SPEC, BASE, SETTINGS, attempt=0, node="n", init_revision=sha)
    (adapter,) = TrainerConfig.parse(yaml.safe_load(config["data"]["trainer.yaml"])).adapters
    assert adapter.init_revision == sha
    scratch, _ = plan_attempt(REF, SPEC, BASE, SETTINGS, attempt=0, node="n")
    (fresh,) = TrainerConfig.parse(yaml.safe_load(scratch["data"]["trainer.yaml"])).adapters
    assert fresh.init_revision is None
