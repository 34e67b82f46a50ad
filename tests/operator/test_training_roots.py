"""Dataset roots: a TrainingJob reads data only under the roots an admin declares, judged normalized."""

from __future__ import annotations

import pytest

from loraplex.operator.settings import OperatorSettings, SettingsError
from loraplex.operator.training_roots import RootError, dataset_problem, parse_roots, place_dataset

ROOTS = parse_roots(["pvc://loraplex-store/datasets", "file:///data", "s3://datasets/team-a"])


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://loraplex-store/datasets/support-tickets.jsonl",
        "pvc://loraplex-store/datasets",
        "file:///data/train.jsonl",
        "file:///data//nested/./train.jsonl",  # normalized: still under /data
        "file:///data/caf%C3%A9.jsonl",
        "s3://datasets/team-a/train.jsonl",
    ],
)
def test_a_dataset_under_a_root_is_admitted(uri: str) -> None:
    assert dataset_problem(uri, ROOTS) is None


@pytest.mark.parametrize(
    "uri",
    [
        "file:///proc/self/environ",
        "file:///var/run/secrets/kubernetes.io/serviceaccount/token",
        "file:///data2/train.jsonl",  # a sibling sharing the prefix is not under /data
        "file:///data/../etc/passwd",
        "file:///data/%2e%2e/etc/passwd",
        "file:///data/a%2F..%2F..%2Fetc",  # an encoded slash that decodes to a '..' segment
        "file:///data/%252e%252e/x",  # double encoding: cannot be judged
        "file:///data/x?y",
        "file:///data\\..\\etc",
        "pvc://loraplex-store/models/secret.jsonl",
        "pvc://other-claim/datasets/x.jsonl",
        "s3://datasets/team-b/x.jsonl",
        "https://169.254.169.254/latest/meta-data",
    ],
)
def test_a_dataset_outside_every_root_is_refused_with_a_reason_naming_the_roots(uri: str) -> None:
    problem = dataset_problem(uri, ROOTS)
    assert problem is not None
    reason, message = problem
    assert reason == "DatasetOutsideRoots"
    assert message.startswith("spec.dataset.uri: ")
    assert "training.datasetRoots" in message


def test_the_message_lists_the_roots() -> None:
    problem = dataset_problem("file:///etc/passwd", ROOTS)
    assert problem is not None
    assert "pvc://loraplex-store/datasets, file:///data, s3://datasets/team-a" in problem[1]


def test_no_roots_admits_nothing() -> None:
    problem = dataset_problem("file:///data/x", ())
    assert problem is not None
    assert "none declared" in problem[1]


def test_the_deepest_root_places_a_dataset() -> None:
    roots = parse_roots(["pvc://store", "pvc://store/datasets/team"])
    placement = place_dataset("pvc://store/datasets/team/a/b.jsonl", roots)
    assert placement.root.uri() == "pvc://store/datasets/team"
    assert placement.relative == ("a", "b.jsonl")


@pytest.mark.parametrize(
    "root", ["file:///", "file:///data/../etc", "ftp://host/x", "pvc://", "https://u:p@h/x"]
)
def test_an_unusable_root_is_refused(root: str) -> None:
    with pytest.raises(RootError):
        parse_roots([root])


def test_the_operator_reads_the_roots_from_its_environment() -> None:
    settings = OperatorSettings.from_env({"LORAPLEX_TRAINING_DATASET_ROOTS": "file:///data, pvc://store/ds"})
    assert settings.training_dataset_roots == ("file:///data", "pvc://store/ds")
    assert OperatorSettings.from_env({}).training_dataset_roots == ("pvc://loraplex-store/datasets",)
    assert OperatorSettings.from_env({"LORAPLEX_TRAINING_DATASET_ROOTS": ""}).training_dataset_roots == ()
    with pytest.raises(SettingsError, match="LORAPLEX_TRAINING_DATASET_ROOTS"):
        OperatorSettings.from_env({"LORAPLEX_TRAINING_DATASET_ROOTS": "file:///"})
