"""The router Deployment carries the BaseModel's `spec.access`: key Secrets mounted, OIDC flags, access rules.

Read back the way the router reads them (its own flag parser and settings), so the
operator's manifest and the router's command line cannot drift apart.
"""

from __future__ import annotations

import argparse

from loraplex.api.access import AccessList, CatalogAccess
from loraplex.api.basemodel import BaseModelSpec
from loraplex.operator.fleet import BaseModelRef, router_deployment
from loraplex.operator.settings import OperatorSettings
from loraplex.router.main import configure, settings_from_args
from loraplex.router.settings import RouterSettings
from tests.restricted_pods import restricted_violations

REF = BaseModelRef("llama-8b", "serving", "uid-1")
SETTINGS = OperatorSettings(image="loraplex:test")
ACCESS = {
    "authentication": {
        "apiKeys": {"secretNames": ["team-keys", "ops-keys"]},
        "oidc": {"issuer": "https://login.example.com/realms/ai", "audiences": ["loraplex"]},
    },
    "baseModel": {"groups": ["staff"]},
    "catalog": {"owner": "user-{subject}"},
}


def test_each_key_secret_is_mounted_read_only_and_handed_to_the_router() -> None:
    spec = BaseModelSpec.model_validate({"model": {"uri": "/models/tiny"}, "access": ACCESS})
    deployment = router_deployment(REF, spec, SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"] if m.get("readOnly")}
    assert sorted(mounts.values()) == ["ops-keys", "team-keys"]
    settings = settings_from_args(parse(container["args"]))
    assert {str(p) for p in settings.api_key_dirs} == set(mounts)
    assert settings.oidc is not None
    assert (settings.oidc.issuer, settings.oidc.audiences) == (
        "https://login.example.com/realms/ai",
        ("loraplex",),
    )
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    access = RouterSettings.from_env(env, base_model="x").access
    assert access.base_model == AccessList(groups=["staff"])
    assert access.catalog == CatalogAccess(owner="user-{subject}")
    assert not restricted_violations(pod)


def test_without_access_the_router_authenticates_no_one() -> None:
    spec = BaseModelSpec.model_validate({"model": {"uri": "/models/tiny"}})
    deployment = router_deployment(REF, spec, SETTINGS)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "volumes" not in deployment["spec"]["template"]["spec"]
    settings = settings_from_args(parse(container["args"]))
    assert (settings.api_key_dirs, settings.oidc) == ((), None)
    assert not [e for e in container["env"] if e["name"] == "LORAPLEX_ROUTER_ACCESS"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv[1:])  # past the `router` subcommand
