"""Fetching adapters: local directories, HTTPS tar archives, refusals, retries, concurrency."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from loraplex.e2e.adapter_store import AdapterStore
from loraplex.worker.agent.disk_cache import DiskCache
from loraplex.worker.agent.fetch import Fetcher, FetchError, RetryPolicy
from loraplex.worker.digest import tree_digest

FAST = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02)


def adapter_dir(root: Path, seed: str = "w") -> Path:
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "adapter_model.safetensors").write_bytes(seed.encode() * 1000)
    return root


def tar_bytes(files: dict[str, bytes], *, compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Store:
    """A real HTTP server on loopback that serves archives, with scripted failures."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.failures: dict[str, list[int]] = {}
        self.requests: dict[str, int] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.requests[path] = self.requests.get(path, 0) + 1
        scripted = self.failures.get(path)
        if scripted:
            return web.Response(status=scripted.pop(0))
        if path not in self.objects:
            return web.Response(status=404)
        return web.Response(body=self.objects[path])


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    served = Store()
    app = web.Application()
    app.router.add_get("/{tail:.*}", served.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    served.url = f"http://127.0.0.1:{port}"
    yield served
    await runner.cleanup()


async def test_a_local_directory_is_copied_and_verified(tmp_path: Path) -> None:
    source = adapter_dir(tmp_path / "src")
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    path = await Fetcher(cache, retry=FAST).fetch(f"file://{source}", tree_digest(source))
    assert tree_digest(path) == tree_digest(source)
    assert path.parent == tmp_path / "cache" / "adapters"


async def test_a_pvc_uri_reads_under_the_claim_mount(tmp_path: Path) -> None:
    source = adapter_dir(tmp_path / "pvcs" / "adapters" / "team" / "sql")
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    fetcher = Fetcher(cache, pvc_root=tmp_path / "pvcs", retry=FAST)
    path = await fetcher.fetch("pvc://adapters/team/sql", tree_digest(source))
    assert tree_digest(path) == tree_digest(source)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("file:///nowhere/at/all", "SourceNotFound"),
        ("file:///tmp/../etc", "InvalidSource"),
        ("ftp://host/x", "InvalidSource"),
    ],
)
async def test_bad_sources_fail_with_a_reason(tmp_path: Path, uri: str, reason: str) -> None:
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    with pytest.raises(FetchError) as caught:
        await Fetcher(cache, retry=FAST).fetch(uri, "0" * 64)
    assert caught.value.reason == reason


async def test_a_digest_mismatch_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    source = adapter_dir(tmp_path / "src")
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    with pytest.raises(FetchError) as caught:
        await Fetcher(cache, retry=FAST).fetch(f"file://{source}", "f" * 64)
    assert caught.value.reason == "DigestMismatch"
    assert "f" * 64 in caught.value.message
    # The agent's own files are no digest oracle: what a local path holds is not told.
    assert tree_digest(source) not in caught.value.message
    assert cache.revisions() == set()
    assert list((tmp_path / "cache" / "staging").iterdir()) == []


def test_an_https_archive_and_its_catalog_digest_are_fetched_with_tls(tmp_path: Path) -> None:
    source = adapter_dir(tmp_path / "src")
    store = AdapterStore(tmp_path / "store").start()
    try:
        digest = store.publish("sql", source)
        cache = DiskCache(tmp_path / "cache", 1 << 20)

        async def fetch() -> tuple[str, Path]:
            fetcher = Fetcher(cache, retry=FAST, ssl_context=store.ssl_context())
            return await fetcher.read_digest(store.uri("sql")), await fetcher.fetch(store.uri("sql"), digest)

        published, path = asyncio.run(fetch())
        assert published == digest
        assert tree_digest(path) == digest

        async def untrusted() -> None:
            await Fetcher(DiskCache(tmp_path / "other", 1 << 20), retry=FAST).fetch(store.uri("sql"), digest)

        with pytest.raises(FetchError) as caught:  # the store's CA is not in the system trust store
            asyncio.run(untrusted())
        assert caught.value.reason == "SourceUnreachable"
    finally:
        store.stop()


def test_https_redirects_are_followed_to_https_only(tmp_path: Path) -> None:
    source = adapter_dir(tmp_path / "src")
    store = AdapterStore(tmp_path / "store").start()
    try:
        digest = store.publish("sql", source)
        store.redirects["/moved.tar"] = "/sql.tar"  # relative, on the same https store
        store.redirects["/elsewhere.tar"] = store.uri("sql")
        store.redirects["/plain.tar"] = f"http://localhost:{store.port}/sql.tar"
        store.redirects["/loop.tar"] = "/loop.tar"

        async def fetch(path: str) -> Path:
            cache = DiskCache(tmp_path / "cache" / path.strip("/"), 1 << 20)
            fetcher = Fetcher(cache, retry=FAST, ssl_context=store.ssl_context())
            return await fetcher.fetch(f"{store.url}{path}", digest)

        assert tree_digest(asyncio.run(fetch("/moved.tar"))) == digest
        assert tree_digest(asyncio.run(fetch("/elsewhere.tar"))) == digest
        for path, reason in (("/plain.tar", "SourceForbidden"), ("/loop.tar", "SourceUnreachable")):
            with pytest.raises(FetchError) as caught:
                asyncio.run(fetch(path))
            assert caught.value.reason == reason
            assert path in caught.value.message
    finally:
        store.stop()


async def test_transient_errors_are_retried_with_backoff_and_404_is_not(tmp_path: Path, store: Store) -> None:
    files = {"adapter_model.safetensors": b"q" * 10}
    store.objects["/flaky.tar"] = tar_bytes(files)
    store.failures["/flaky.tar"] = [503, 502]
    digest = _digest_of(tmp_path, files)
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    fetcher = Fetcher(cache, retry=FAST)
    await fetcher._with_retries(lambda: fetcher._fetch_once(_http(store, "/flaky.tar"), digest))
    assert store.requests["/flaky.tar"] == 3

    with pytest.raises(FetchError) as caught:
        await fetcher._with_retries(lambda: fetcher._fetch_once(_http(store, "/missing.tar"), digest))
    assert caught.value.reason == "SourceNotFound"
    assert store.requests["/missing.tar"] == 1


@pytest.mark.parametrize("name", ["../escape", "/etc/evil", "a/../../escape"])
async def test_archives_that_escape_the_cache_directory_are_refused(
    tmp_path: Path, store: Store, name: str
) -> None:
    store.objects["/evil.tar"] = tar_bytes({name: b"boom", "adapter_config.json": b"{}"})
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    fetcher = Fetcher(cache, retry=FAST)
    with pytest.raises(FetchError) as caught:
        await fetcher._with_retries(lambda: fetcher._fetch_once(_http(store, "/evil.tar"), "0" * 64))
    assert caught.value.reason == "UnsafeArchive"
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "cache" / "escape").exists()


async def test_concurrent_fetches_are_bounded(tmp_path: Path) -> None:
    sources = [adapter_dir(tmp_path / f"src{i}", seed=str(i)) for i in range(6)]
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    fetcher = Fetcher(cache, retry=FAST, concurrency=2)
    active = 0
    peak = 0
    original = fetcher._fetch_once

    async def counting(source, sha):  # type: ignore[no-untyped-def]
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.01)
            return await original(source, sha)
        finally:
            active -= 1

    fetcher._fetch_once = counting  # type: ignore[method-assign]
    await asyncio.gather(*(fetcher.fetch(f"file://{s}", tree_digest(s)) for s in sources))
    assert peak == 2
    assert len(cache.revisions()) == 6


def _http(store: Store, path: str):  # type: ignore[no-untyped-def]
    """The scripted plain-HTTP store as a source (the TLS path is covered with the HTTPS store above)."""
    from loraplex.worker.agent.sources import Source

    return Source("https", store.url + path)


def _digest_of(tmp_path: Path, files: dict[str, bytes]) -> str:
    root = tmp_path / "digest-of"
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return tree_digest(root)
