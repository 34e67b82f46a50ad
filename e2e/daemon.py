"""Background daemons of the local fleet (the operator, the worker runner): spawn, find, stop.

They outlive the `loraplex dev up` that starts them, so they are spawned in
their own session with `posix_spawn` (no Popen handle to wait on), their pid
kept in a file beside the cluster's state, and stopped with SIGTERM, then
SIGKILL for their whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from loraplex.e2e.cluster import process_alive, wait_processes_gone


def running_pid(pid_file: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        return pid if process_alive(pid) else None
    return None


def spawn(command: list[str], env: dict[str, str], log_file: Path, pid_file: Path) -> int:
    pid = os.posix_spawn(
        command[0], command, env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )  # fmt: skip
    pid_file.write_text(str(pid))
    return pid


def stop(pid_file: Path, timeout: float) -> None:
    pid = running_pid(pid_file)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        wait_processes_gone([pid], timeout)
        if process_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when we are the one who spawned it
    pid_file.unlink(missing_ok=True)
