"""API keys (loraplex.router.api_keys) in folders laid out as the kubelet mounts Secrets; `api-key new`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from loraplex.api.access import ApiKeyEntry, key_digest
from loraplex.cli import main
from loraplex.router.api_keys import ApiKeyStore


def entry(key: str, subject: str, *groups: str) -> str:
    return json.dumps({"sha256": key_digest(key), "subject": subject, "groups": list(groups)})


def publish(folder: Path, data: dict[str, str]) -> None:
    """Write a Secret's data as the kubelet does: a fresh timestamped folder, `..data` swapped to it,
    and one symlink per key through `..data`."""
    folder.mkdir(exist_ok=True)
    version = folder / f"..2026_{len(list(folder.glob('..2026_*')))}"
    version.mkdir()
    for name, text in data.items():
        (version / name).write_text(text)
    tmp = folder / "..data_tmp"
    tmp.symlink_to(version.name)
    tmp.replace(folder / "..data")
    for name in data:
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")
    for link in folder.iterdir():
        if not link.name.startswith(".") and link.name not in data:
            link.unlink()


def test_a_key_authenticates_its_subject_with_its_groups(tmp_path: Path) -> None:
    publish(tmp_path / "keys", {"alice": entry("key-a", "alice", "team-a")})
    store = ApiKeyStore([tmp_path / "keys"])
    store.reload()
    principal = store.authenticate("key-a")
    assert principal is not None
    assert (principal.subject, principal.groups, principal.authenticated) == ("alice", {"team-a"}, True)
    assert store.authenticate("key-b") is None
    assert store.authenticate("") is None


def test_keys_are_added_rotated_and_revoked_by_editing_the_secret(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    publish(folder, {"alice": entry("old-key", "alice"), "bob": entry("bob-key", "bob")})
    store = ApiKeyStore([folder])
    store.reload()
    assert store.authenticate("old-key") is not None
    publish(folder, {"alice": entry("new-key", "alice")})  # rotated alice's, revoked bob's
    assert store.reload()
    assert store.authenticate("old-key") is None
    assert store.authenticate("bob-key") is None
    principal = store.authenticate("new-key")
    assert principal is not None
    assert principal.subject == "alice"
    assert not store.reload()  # nothing changed since


def test_a_file_that_is_not_an_entry_is_skipped_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "keys"
    publish(folder, {"good": entry("k", "alice"), "junk": "password: hunter2", "list": "[1, 2"})
    store = ApiKeyStore([folder, tmp_path / "missing"])
    store.reload()
    assert len(store) == 1
    assert "hunter2" not in caplog.text
    assert "junk" in caplog.text


def test_keys_come_from_every_folder(tmp_path: Path) -> None:
    publish(tmp_path / "a", {"alice": entry("key-a", "alice")})
    publish(tmp_path / "b", {"bob": entry("key-b", "bob")})
    store = ApiKeyStore([tmp_path / "a", tmp_path / "b"])
    store.reload()
    principals = [store.authenticate(key) for key in ("key-a", "key-b")]
    assert {p.subject for p in principals if p is not None} == {"alice", "bob"}


def test_api_key_new_prints_a_secret_that_authenticates_the_key_it_prints_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "key"
    argv = ["api-key", "new", "--subject", "alice", "--group", "team-a", "--secret", "router-keys"]
    assert main([*argv, "--namespace", "ns", "--key-file", str(key_file)]) == 0
    key = key_file.read_text().strip()
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    printed = capsys.readouterr()
    assert key not in printed.out
    assert key not in printed.err
    secret = yaml.safe_load(printed.out)
    assert (secret["kind"], secret["metadata"]) == ("Secret", {"name": "router-keys", "namespace": "ns"})
    publish(tmp_path / "mounted", secret["stringData"])
    store = ApiKeyStore([tmp_path / "mounted"])
    store.reload()
    principal = store.authenticate(key)
    assert principal is not None
    assert (principal.subject, principal.groups) == ("alice", {"team-a"})
    (text,) = secret["stringData"].values()
    assert ApiKeyEntry.model_validate_json(text).sha256 == key_digest(key)


def test_api_key_new_prints_the_key_once_on_stderr_without_a_key_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["api-key", "new", "--subject", "bob"]) == 0
    printed = capsys.readouterr()
    key = printed.err.rsplit(" ", 1)[-1].strip()
    assert key.startswith("lpx_")
    (text,) = yaml.safe_load(printed.out).values()
    assert ApiKeyEntry.model_validate_json(text).sha256 == key_digest(key)
