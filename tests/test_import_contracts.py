"""The layering contracts hold, and each one catches the import it forbids.

`make lint` runs `lint-imports` over pyproject.toml's contracts. These tests check the same
contracts from Python, and then add one forbidden import at a time to the real import graph to
show that the contract meant to forbid it breaks: a contract that cannot fail checks nothing.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import grimp
import pytest
from importlinter import configuration
from importlinter.application.use_cases import read_user_options
from importlinter.application.user_options import UserOptions
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.independence import IndependenceContract
from importlinter.contracts.layers import LayersContract
from importlinter.domain.contract import Contract

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
CONTRACT_TYPES: dict[str, type[Contract]] = {
    "layers": LayersContract,
    "forbidden": ForbiddenContract,
    "independence": IndependenceContract,
}
DEPLOYABLES = "Deployables are independent"
AGENT_TRAINER = "The worker's agent and trainer are separate processes"
API_PURE = "The API layer stays pure"
OPERATOR_LAYERS = "Operator layers"
OPERATOR_PURE = "Operator controllers and planners are pure"


@cache
def options() -> UserOptions:
    configuration.configure()  # what the lint-imports command does first
    return read_user_options(str(PYPROJECT))


@cache
def graph() -> grimp.ImportGraph:
    (root,) = options().session_options["root_packages"]
    return grimp.build_graph(root, include_external_packages=True, cache_dir=None)


def contract(name_start: str) -> Contract:
    (chosen,) = [c for c in options().contracts_options if c["name"].startswith(name_start)]
    return CONTRACT_TYPES[chosen["type"]](
        name=chosen["name"], session_options=options().session_options, contract_options=chosen
    )


def kept(name_start: str, extra_import: tuple[str, str] | None = None) -> bool:
    checked = copy.deepcopy(graph())
    if extra_import:
        importer, imported = extra_import
        checked.add_import(importer=importer, imported=imported, line_number=1, line_contents="import")
    return contract(name_start).check(checked, verbose=False).kept


@pytest.mark.parametrize("name", [DEPLOYABLES, AGENT_TRAINER, API_PURE, OPERATOR_LAYERS, OPERATOR_PURE])
def test_every_contract_holds_for_the_code_as_it_is(name: str) -> None:
    assert kept(name)


@pytest.mark.parametrize(
    ("name", "importer", "imported"),
    [
        (DEPLOYABLES, "loraplex.worker.agent.main", "loraplex.operator.fleet"),
        (DEPLOYABLES, "loraplex.router.proxy", "loraplex.worker.agent.agent"),
        (DEPLOYABLES, "loraplex.operator.main", "loraplex.router.main"),
        (DEPLOYABLES, "loraplex.operator.fleet", "loraplex.e2e.cluster"),
        (DEPLOYABLES, "loraplex.api.adapter", "loraplex.operator.fleet"),
        (DEPLOYABLES, "loraplex.kube", "loraplex.worker.agent.main"),
        (AGENT_TRAINER, "loraplex.worker.agent.fetch", "loraplex.worker.trainer.training"),
        (API_PURE, "loraplex.api.adapter", "kubernetes"),
        (API_PURE, "loraplex.api.workerplacement", "aiohttp"),
        (OPERATOR_LAYERS, "loraplex.operator.placement_loop", "loraplex.operator.adapter_handlers"),
        (OPERATOR_LAYERS, "loraplex.operator.training_handlers", "loraplex.operator.basemodel_handlers"),
        (OPERATOR_LAYERS, "loraplex.operator.placement", "loraplex.operator.apply"),
        (OPERATOR_LAYERS, "loraplex.operator.apply", "loraplex.operator.main"),
        (OPERATOR_PURE, "loraplex.operator.placement", "kopf"),
        (OPERATOR_PURE, "loraplex.operator.fleet", "kubernetes"),
        (OPERATOR_PURE, "loraplex.operator.training_admission", "time"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(name: str, importer: str, imported: str) -> None:
    assert kept(name)
    assert not kept(name, (importer, imported))
