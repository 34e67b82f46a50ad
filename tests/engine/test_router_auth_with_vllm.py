"""The router with authentication on, in front of a real CPU vLLM worker and its agent.

Callers: API keys from a key folder laid out as a mounted Secret (alice in team-a,
bob, and keys that get revoked or rotated while the router runs) and OIDC tokens
from a local issuer (its JWKS served over HTTP by the test). Access: the catalog's
`user-{subject}` adapters are their subject's, the named adapter `sql` is team-a's,
the base model is every authenticated caller's.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import yaml

from loraplex.api.access import key_digest
from loraplex.e2e.tiny_model import AdapterFiles
from loraplex.e2e.waiting import wait_until
from loraplex.e2e.worker_processes import AgentProcess, RouterProcess, VllmProcess
from tests.engine.conftest import wanted_entry, write_wanted
from tests.router.auth_issuer import LocalIssuer

pytestmark = pytest.mark.engine

KEYS = {"alice": "lpx_alice-key", "bob": "lpx_bob-key"}


def write_key(folder: Path, name: str, key: str, subject: str, *groups: str) -> None:
    """One Secret data entry, swapped in atomically as the kubelet does."""
    entry = {"sha256": key_digest(key), "subject": subject, "groups": list(groups)}
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(entry))
    tmp.replace(folder / name)


@dataclass
class SecuredFleet:
    router: RouterProcess
    vllm: VllmProcess
    agent: AgentProcess
    keys: Path
    issuer: LocalIssuer

    def client(self, credential: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.router.url}/v1", api_key=credential, max_retries=0, timeout=60)

    def complete(self, credential: str, model: str) -> str:
        with self.client(credential) as client:
            answer = client.completions.create(model=model, prompt="the quick", max_tokens=8, temperature=0)
        return answer.choices[0].text or ""

    def status(self, credential: str | None, model: str = "base") -> int:
        """The router's answer to a completion request with this bearer credential (None: none)."""
        body = json.dumps({"model": model, "prompt": "the quick", "max_tokens": 2}).encode()
        headers = {"Content-Type": "application/json"}
        if credential is not None:
            headers["Authorization"] = f"Bearer {credential}"
        request = urllib.request.Request(f"{self.router.url}/v1/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    def models(self, credential: str) -> set[str]:
        with self.client(credential) as client:
            return {m.id for m in client.models.list()}


@pytest.fixture(scope="module")
def secured(
    vllm: VllmProcess, adapters: dict[str, AdapterFiles], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredFleet]:
    work = tmp_path_factory.mktemp("router-auth")
    catalog = work / "catalog"
    catalog.mkdir()
    for name, files in (("user-alice", adapters["a0"]), ("user-bob", adapters["a1"])):
        (catalog / name).symlink_to(files.path, target_is_directory=True)
        (catalog / f"{name}.sha256").write_text(files.sha256)
    keys = work / "keys"
    keys.mkdir()
    write_key(keys, "alice", KEYS["alice"], "alice", "team-a")
    write_key(keys, "bob", KEYS["bob"], "bob")
    access = work / "access.yaml"
    access.write_text(
        yaml.safe_dump({"catalog": {"owner": "user-{subject}"}, "adapters": {"sql": {"groups": ["team-a"]}}})
    )
    wanted = work / "wanted.yaml"
    write_wanted(wanted, [wanted_entry(adapters["a2"], "GPU", name="sql")])
    agent = AgentProcess(
        vllm, work / "cache", work / "agent.log", worker="w0", wanted_file=wanted,
        catalog_template=f"file://{catalog}/{{adapter}}",
    ).start()  # fmt: skip
    with LocalIssuer() as issuer:
        router = RouterProcess(
            work / "router.log",
            api_key=vllm.api_key,
            workers={"w0": agent},
            extra_args=[
                "--api-keys-dir", str(keys), "--access-file", str(access),
                "--oidc-issuer", issuer.issuer, "--oidc-audience", "loraplex",
            ],
        )  # fmt: skip
        try:
            wait_until(lambda: agent.held() == {"sql": "GPU"}, 60, "the agent holding sql")
            router.start()
            fleet = SecuredFleet(router, vllm, agent, keys, issuer)
            wait_until(lambda: "sql" in fleet.models(KEYS["alice"]), 30, "the router reading the residency")
            yield fleet
        finally:
            router.stop()
            agent.stop()


def test_a_caller_without_a_good_key_gets_401_in_openais_shape(secured: SecuredFleet) -> None:
    for credential in (None, "lpx_not-a-key", KEYS["alice"] + "x"):
        assert secured.status(credential) == 401
    with pytest.raises(openai.AuthenticationError) as refused:
        secured.complete("lpx_not-a-key", "base")
    assert refused.value.code == "invalid_api_key"
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    with urllib.request.urlopen(f"{secured.router.url}/healthz", timeout=10) as health:
        assert health.status == 200


def test_a_key_for_user_a_cannot_use_user_bs_adapter(secured: SecuredFleet) -> None:
    assert secured.complete(KEYS["alice"], "user-alice") == secured.vllm.text("user-alice")
    with pytest.raises(openai.NotFoundError) as hidden:
        secured.complete(KEYS["bob"], "user-alice")
    with pytest.raises(openai.NotFoundError) as missing:
        secured.complete(KEYS["bob"], "user-nobody")
    assert hidden.value.body == json.loads(
        json.dumps(missing.value.body).replace("user-nobody", "user-alice")
    )
    with pytest.raises(openai.NotFoundError):
        secured.complete(KEYS["bob"], "sql")  # team-a's
    assert secured.complete(KEYS["alice"], "sql") == secured.vllm.text("sql")
    assert secured.complete(KEYS["bob"], "base") == secured.vllm.text("base")


def test_models_lists_only_what_each_caller_may_use(secured: SecuredFleet) -> None:
    secured.complete(KEYS["alice"], "user-alice")  # loaded now: the router lists what workers hold
    wait_until(lambda: "user-alice" in secured.models(KEYS["alice"]), 30, "user-alice listed")
    assert {"base", "sql", "user-alice"} <= secured.models(KEYS["alice"])
    assert secured.models(KEYS["bob"]) & {"sql", "user-alice"} == set()
    assert "base" in secured.models(KEYS["bob"])


def test_a_revoked_key_is_refused_without_a_restart(secured: SecuredFleet) -> None:
    write_key(secured.keys, "carol", "lpx_carol-key", "carol")
    wait_until(lambda: secured.status("lpx_carol-key") == 200, 30, "carol's new key accepted")
    (secured.keys / "carol").unlink()
    wait_until(lambda: secured.status("lpx_carol-key") == 401, 30, "carol's revoked key refused")
    assert secured.router.running()


def test_a_rotated_key_replaces_the_old_one(secured: SecuredFleet) -> None:
    write_key(secured.keys, "dave", "lpx_dave-old", "dave")
    wait_until(lambda: secured.status("lpx_dave-old") == 200, 30, "dave's first key accepted")
    write_key(secured.keys, "dave", "lpx_dave-new", "dave")
    wait_until(lambda: secured.status("lpx_dave-new") == 200, 30, "dave's rotated key accepted")
    assert secured.status("lpx_dave-old") == 401


def test_tokens_with_a_wrong_signature_audience_or_expiry_are_refused(secured: SecuredFleet) -> None:
    issuer = secured.issuer
    assert secured.status(issuer.forged("bob")) == 401
    assert secured.status(issuer.token("bob", audience="another-service")) == 401
    assert secured.status(issuer.token("bob", exp=int(time.time()) - 3600)) == 401


def test_a_valid_token_authenticates_its_subject(secured: SecuredFleet) -> None:
    issuer = secured.issuer
    assert secured.complete(issuer.token("bob"), "user-bob") == secured.vllm.text("user-bob")
    assert secured.status(issuer.token("erin"), "user-bob") == 404
    assert secured.complete(issuer.token("frank", groups=["team-a"]), "sql") == secured.vllm.text("sql")
