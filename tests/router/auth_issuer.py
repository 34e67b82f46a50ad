"""A tiny OIDC issuer for tests: its OpenID configuration and JWKS over real HTTP, and tokens it signs.

It runs an aiohttp server in a thread of its own, so synchronous tests (the
engine tests, with the router in another process) and async ones can both use
it. `token()` signs with the issuer's key; `forged()` with a key of the same
`kid` that the JWKS does not publish (a wrong signature).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

KID = "test-key-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalIssuer:
    def __init__(self) -> None:
        self.port = _free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_requests = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> LocalIssuer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._configuration)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _configuration(self, _: web.Request) -> web.Response:
        return web.json_response({"issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks"})

    async def _jwks(self, _: web.Request) -> web.Response:
        self.jwks_requests += 1
        jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": KID, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": [jwk]})

    def claims(self, subject: str, audience: str = "loraplex", **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + 600, **extra}

    def token(self, subject: str, audience: str = "loraplex", **extra: Any) -> str:
        return jwt.encode(
            self.claims(subject, audience, **extra), self.key, algorithm="RS256", headers={"kid": KID}
        )

    def forged(self, subject: str, audience: str = "loraplex", **extra: Any) -> str:
        return jwt.encode(
            self.claims(subject, audience, **extra), self.other_key, algorithm="RS256", headers={"kid": KID}
        )
