"""An adapter store over HTTPS on loopback, for tests, benchmarks and the local fleet.

Serves a directory with aiohttp in a background thread, over TLS with a
certificate from a throwaway CA (trustme), so the agent's `https://` fetch
path runs exactly as against a real store. `publish` packs an adapter
directory as `<name>.tar` with its digest beside it in `<name>.tar.sha256`
(the catalog convention).
"""

from __future__ import annotations

import asyncio
import ssl
import tarfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from loraplex.worker.digest import tree_digest


class AdapterStore:
    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.ca_file = root.parent / f"{root.name}-ca.pem"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.redirects: dict[str, str] = {}  # path -> where it redirects (302), for tests

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def uri(self, name: str) -> str:
        return f"{self.url}/{name}.tar"

    def catalog_template(self) -> str:
        return f"{self.url}/{{adapter}}.tar"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def publish(self, name: str, directory: Path) -> str:
        """Pack `directory` as `<name>.tar` (and its digest); return the digest."""
        digest = tree_digest(directory)
        archive = self.root / f"{name}.tar"
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive.with_suffix(".tmp"), "w") as tar:
            for path in sorted(directory.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    tar.add(path, arcname=path.relative_to(directory).as_posix())
        archive.with_suffix(".tmp").replace(archive)
        (self.root / f"{name}.tar.sha256").write_text(digest + "\n")
        return digest

    def start(self) -> AdapterStore:
        import trustme

        authority = trustme.CA()
        authority.cert_pem.write_to_path(str(self.ca_file))
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
        ready = threading.Event()

        @web.middleware
        async def count(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            self.requests += 1
            if request.path in self.redirects:
                raise web.HTTPFound(self.redirects[request.path])
            return await handler(request)

        async def serve() -> None:
            app = web.Application(middlewares=[count])
            app.router.add_static("/", self.root)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=server_context)
            await site.start()
            self.port = self._runner.addresses[0][1]
            ready.set()

        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except OSError as error:  # the port is taken
                failure.append(error)
                ready.set()
                return
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="adapter-store", daemon=True)
        self._thread.start()
        if not ready.wait(30) or failure:
            raise RuntimeError(f"the adapter store did not start on port {self.port}: {failure}")
        return self

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        runner, loop = self._runner, self._loop
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
