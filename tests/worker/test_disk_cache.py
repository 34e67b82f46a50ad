"""The disk tier: verified atomic commits, a byte budget, LRU eviction that spares protected revisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplex.worker.agent.disk_cache import DigestMismatch, DiskCache
from loraplex.worker.digest import tree_digest


def staged(cache: DiskCache, content: bytes) -> tuple[Path, str]:
    path = cache.new_staging()
    (path / "adapter_model.safetensors").write_bytes(content)
    (path / "adapter_config.json").write_text("{}")
    return path, tree_digest(path)


def test_a_verified_revision_is_committed_under_its_digest(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, budget_bytes=10_000)
    path, sha = staged(cache, b"x" * 100)
    final = cache.commit(path, sha)
    assert final == tmp_path / "adapters" / sha
    assert cache.has(sha)
    assert cache.revision_of(str(final)) == sha
    assert cache.size(sha) == 102
    assert not path.exists()


def test_a_mismatching_revision_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, budget_bytes=10_000)
    path, _ = staged(cache, b"x")
    with pytest.raises(DigestMismatch, match="was expected"):
        cache.commit(path, "0" * 64)
    assert cache.revisions() == set()
    assert list((tmp_path / "staging").iterdir()) == []


def test_eviction_keeps_the_budget_least_recently_used_first_protected_spared(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, budget_bytes=250)
    shas = []
    for content in (b"a" * 98, b"b" * 98, b"c" * 98):
        path, sha = staged(cache, content)
        cache.commit(path, sha)
        shas.append(sha)
    cache.touch(shas[0])  # now b is the least recently used
    evicted: list[str] = []
    assert cache.evict(protected={shas[1]}, on_evict=lambda sha, _size: evicted.append(sha)) == [shas[2]]
    assert evicted == [shas[2]]
    assert cache.used_bytes <= 250
    assert cache.revisions() == {shas[0], shas[1]}


def test_a_restart_forgets_half_written_staging_and_keeps_committed_revisions(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, budget_bytes=10_000)
    path, sha = staged(cache, b"kept")
    cache.commit(path, sha)
    leftover, _ = staged(cache, b"half written")
    reopened = DiskCache(tmp_path, budget_bytes=10_000)
    assert reopened.revisions() == {sha}
    assert not leftover.exists()
