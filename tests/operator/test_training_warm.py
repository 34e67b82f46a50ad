"""What a warm trainer runs and how a pass sees it: its ConfigMap, its Job, its tenants' states."""

from __future__ import annotations

import yaml

from loraplex.api.basemodel import BaseModelSpec
from loraplex.api.trainingjob import TrainingJobSpec
from loraplex.operator.settings import OperatorSettings
from loraplex.operator.training_status import JobView, PodView
from loraplex.operator.training_warm import (
    WarmTrainerView,
    current_tenant_state,
    group_annotation,
    parse_group,
    running_trainers,
    tenant_entry,
    trainer_group,
    warm_config_map,
    warm_trainer_job,
    warm_trainer_name,
    warm_trainer_views,
)
from loraplex.operator.training_workload import Store, TrainingJobRef
from loraplex.worker.trainer.config import Tenants, TrainerConfig

SETTINGS = OperatorSettings(
    training_store="pvc://store/loraplex",
    trainer_image="example/trainer:1",
    training_dataset_roots=("pvc://datasets",),
    training_idle_seconds=120,
)
STORE = Store.parse(SETTINGS.training_store)
BASE = BaseModelSpec.model_validate(
    {"model": {"uri": "pvc://models/llama-8b"}, "nodeSelector": {"pool": "gpu"}}
)
SPEC = TrainingJobSpec.model_validate(
    {"baseModel": "llama-8b", "dataset": {"uri": "pvc://datasets/sql/train.jsonl"},
     "output": {"adapterName": "sql"}, "training": {"steps": 100}, "resources": {"gpu": 2}}
)  # fmt: skip
REF = TrainingJobRef("sql-tune", "team", "uid-1", 3)
GROUP = trainer_group("team", SPEC, SETTINGS.training_dataset_roots)


def test_jobs_of_one_base_resources_root_and_rank_class_share_a_group() -> None:
    assert GROUP.dataset_root == "pvc://datasets"
    other_rank = SPEC.model_copy(update={"lora": SPEC.lora.model_copy(update={"rank": 128})})
    assert trainer_group("team", other_rank, SETTINGS.training_dataset_roots) != GROUP
    assert parse_group(group_annotation(GROUP)) == GROUP
    assert parse_group("not json") is None


def test_the_config_map_holds_a_warm_config_and_tenants_the_trainer_accepts() -> None:
    entry = tenant_entry(REF, SPEC, BASE, STORE, SETTINGS.training_dataset_roots, "ab" * 32)
    config = warm_config_map("llama-8b-warm-1", GROUP, "bm-uid", BASE, SETTINGS, [entry])
    assert config["metadata"]["ownerReferences"][0]["kind"] == "BaseModel"
    trainer = TrainerConfig.parse(yaml.safe_load(config["data"]["trainer.yaml"]))
    assert trainer.tenants_file == "/etc/loraplex/tenants.yaml"
    assert trainer.idle_seconds == 120
    assert trainer.adapters == []
    (tenant,) = Tenants.model_validate(yaml.safe_load(config["data"]["tenants.yaml"])).tenants
    assert tenant.name == "sql-tune"
    # The checkpoints a dedicated attempt of the same run would use: a tenant resumes anywhere.
    assert tenant.checkpoint_uri == "file:///store/loraplex/checkpoints/team/uid-1/g3"
    assert tenant.dataset.uri == "file:///data/sql/train.jsonl"
    assert tenant.init_revision == "ab" * 32


def test_the_job_is_one_low_priority_pod_for_every_tenant_pinned_to_its_node() -> None:
    job = warm_trainer_job("llama-8b-warm-1", GROUP, "bm-uid", BASE, SETTINGS, "gpu-3")
    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "loraplex-trainer"
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"pool": "gpu", "kubernetes.io/hostname": "gpu-3"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    mounts = {m["mountPath"]: m.get("subPath") for m in pod["containers"][0]["volumeMounts"]}
    assert "/etc/loraplex" in mounts
    assert mounts["/etc/loraplex"] is None  # a folder, so the kubelet swaps in new tenants files
    assert job["metadata"]["labels"]["loraplex.dev/warm-trainer"] == "llama-8b-warm-1"
    assert parse_group(job["metadata"]["annotations"]["loraplex.dev/trainer-group"]) == GROUP
    views = warm_trainer_views([("team", JobView("llama-8b-warm-1", "gpu-3", group=group_annotation(GROUP)))])
    assert views[("team", "llama-8b-warm-1")].group == GROUP


def test_names_are_stable_per_first_tenant_and_stay_short() -> None:
    name = warm_trainer_name("b" * 60, "uid-1", 0)
    assert name == warm_trainer_name("b" * 60, "uid-1", 0)
    assert name != warm_trainer_name("b" * 60, "uid-1", 1) != warm_trainer_name("b" * 60, "uid-1", 0, 1)
    assert len(name) <= 63


def test_a_tenant_state_counts_only_for_the_jobs_current_run() -> None:
    state = {
        "name": "sql-tune",
        "checkpointUri": "file:///store/loraplex/checkpoints/team/uid-1/g3",
        "phase": "Succeeded",
    }
    assert current_tenant_state(state, REF, STORE) == state
    rerun = TrainingJobRef("sql-tune", "team", "uid-1", 3, run=1)
    assert current_tenant_state(state, rerun, STORE) is None  # the finished run's result
    assert current_tenant_state(None, REF, STORE) is None


def test_finished_trainers_and_those_about_to_go_idle_take_no_tenant() -> None:
    def view(name: str, job: JobView | None) -> WarmTrainerView:
        return WarmTrainerView("team", name, GROUP, "gpu-3", job)

    running = JobView("a", "gpu-3", pods=(PodView("a-x", "gpu-3", "Running"),))
    views = {
        ("team", "a"): view("a", running),
        ("team", "b"): view("b", JobView("b", "gpu-3", complete=True)),
        ("team", "c"): view(
            "c", JobView("c", "gpu-3", pods=(PodView("c-x", "gpu-3", "Running", disrupted=True),))
        ),
        ("team", "d"): view("d", None),  # just created: not indexed yet
        ("team", "e"): view("e", running),
    }
    trainers = running_trainers(views, {("team", "a"): [8, 16]}, {("team", "e"): 100.0}, idle_seconds=120)
    accepting = {t.name: (t.accepting, t.tenants, t.ranks) for t in trainers}
    assert accepting == {
        "a": (True, 2, 24),
        "b": (False, 0, 0),
        "c": (False, 0, 0),
        "d": (True, 0, 0),
        "e": (False, 0, 0),  # empty for 100 of its 120 idle seconds: it may exit before it reads a tenant
    }
