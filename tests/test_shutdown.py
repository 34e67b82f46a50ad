"""Long-running commands stop on SIGTERM when they are a container's PID 1.

The kubelet stops a container with SIGTERM, and the kernel does not deliver a signal to PID 1 that
it has no handler for, so a command without one runs on until SIGKILL at the end of the pod's grace
period (before the fix a worker pod took its whole 60 s to stop: the agent ignored SIGTERM). Each
command here runs as PID 1 of a new PID namespace, as in a pod, and gets SIGTERM once it is up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a PID namespace",
)

SECONDS_TO_STOP = 30  # far above what a stop takes; a command that ignores SIGTERM never stops


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Pid1:
    """`loraplex <args>` as PID 1 of its own PID namespace, its output in `log`."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        argv = ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "loraplex.cli", *args]
        with log.open("wb") as out:
            self.unshare = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.unshare.poll() is None, f"exited before {text!r}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output()}"
            time.sleep(0.2)

    def init_pid(self) -> int:
        """The command's process id as seen here (in its namespace it is 1)."""
        children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children").read_text().split()
        assert len(children) == 1, children
        status = Path(f"/proc/{children[0]}/status").read_text()
        namespace_pids = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()
        assert namespace_pids[-1] == "1", status  # it is PID 1 where it runs, as in a container
        return int(children[0])

    def terminate_and_wait(self) -> int:
        """Send the command SIGTERM (again every 2 s: one sent before its handler was in place is
        lost) until it exits; its exit code."""
        pid = self.init_pid()
        deadline = time.monotonic() + SECONDS_TO_STOP
        while time.monotonic() < deadline:
            os.kill(pid, signal.SIGTERM)
            try:
                return self.unshare.wait(timeout=2)
            except subprocess.TimeoutExpired:
                continue
        raise AssertionError(f"still running {SECONDS_TO_STOP} s after SIGTERM:\n{self.output()}")

    def kill(self) -> None:
        if self.unshare.poll() is None:
            self.unshare.kill()  # --kill-child takes the command with it
            self.unshare.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[Sequence[str]], Pid1]]:
    """Starts `loraplex <args>` as PID 1 (its log under tmp_path); each is killed after the test."""
    started: list[Pid1] = []

    def start_one(args: Sequence[str]) -> Pid1:
        started.append(Pid1(args, tmp_path / f"{args[0]}-{len(started)}.log"))
        return started[-1]

    yield start_one
    for process in started:
        process.kill()


def test_the_agent_stops_on_sigterm(tmp_path: Path, start: Callable[[Sequence[str]], Pid1]) -> None:
    wanted = tmp_path / "wanted.json"
    wanted.write_text('{"adapters": []}')
    port = free_port()
    args = [
        "agent", "--worker", "worker-0", "--vllm-url", f"http://127.0.0.1:{free_port()}",
        "--cache-dir", str(tmp_path / "cache"), "--host", "127.0.0.1", "--port", str(port),
        "--wanted-file", str(wanted),
    ]  # fmt: skip
    agent = start(args)
    agent.wait_for_line("Started agent of worker worker-0")
    assert agent.terminate_and_wait() == 0
    assert "Stopping agent of worker worker-0 (signal)" in agent.output()


def test_the_router_stops_on_sigterm(start: Callable[[Sequence[str]], Pid1]) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    args = [
        "router", "--base-model", "tiny-llama", "--host", "127.0.0.1", "--port", str(free_port()),
        "--workers", f"worker-0={unreachable},{unreachable}",
    ]  # fmt: skip
    router = start(args)
    router.wait_for_line("Started router of tiny-llama")
    assert router.terminate_and_wait() == 0
    assert "Stopped router of tiny-llama" in router.output()


def test_fetch_model_stops_mid_copy_on_sigterm_and_leaves_no_partial_copy(
    tmp_path: Path, start: Callable[[Sequence[str]], Pid1]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes the connection, never answers
        port = silent.getsockname()[1]
        dest = tmp_path / "models"
        args = ["agent", "fetch-model", "--uri", f"https://127.0.0.1:{port}/tiny.tar", "--dest", str(dest)]
        fetch = start(args)
        fetch.wait_for_line(f"fetch-model: copying https://127.0.0.1:{port}/tiny.tar into {dest}")
        assert fetch.terminate_and_wait() == 143  # as a container killed by SIGTERM
    assert "fetch-model: stopped by a signal; the partial copy is removed" in fetch.output()
    assert list(dest.iterdir()) == []  # no work folder, no marker: the next start copies again
