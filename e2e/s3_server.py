"""An S3-compatible server on loopback for tests: moto's server, in a virtual environment of its own.

moto (from PyPI) implements the S3 API over HTTP. It needs boto3/botocore,
whose python-dateutil<3 pin conflicts with the kubernetes client loraplex
uses, so it lives in its own virtual environment under
`$LORAPLEX_CACHE/moto-<version>`, made once (with a file lock) and reused.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from loraplex.e2e.http_probe import free_port, http_json
from loraplex.e2e.waiting import wait_until

MOTO = "moto[server]==5.2.5"


def moto_venv() -> Path:
    root = Path(os.environ.get("LORAPLEX_CACHE", Path.home() / ".cache" / "loraplex"))
    venv = root / f"moto-{MOTO.split('==')[1]}"
    server = venv / "bin" / "moto_server"
    if server.exists():
        return server
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".moto.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not server.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", MOTO], check=True)
    return server


class S3Server:
    """moto's S3 server on 127.0.0.1; `env` is what an S3 client needs to reach it."""

    access_key = "loraplex-test"
    secret_key = "loraplex-test-secret"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def start(self) -> S3Server:
        server = moto_venv()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(server), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_until(
                lambda: http_json(f"{self.endpoint}/moto-api/", timeout=2)[0] == 200, 60, "moto S3 server"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
