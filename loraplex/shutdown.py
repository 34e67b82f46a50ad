"""Long-running commands stop on SIGTERM as they do on Ctrl-C.

In a container the command is PID 1, and the kernel delivers no signal to PID 1 whose action is the
default: without a handler of its own, the SIGTERM with which the kubelet stops a container does
nothing, and the container is killed only when the pod's grace period ends (a worker pod took its
whole 60 s to stop because its agent ignored SIGTERM). `asyncio.run` handles SIGINT alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_event() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets; call it inside the running loop. Outside the main thread
    (a test running a server in-process) no handler can be installed and the event is set by no signal.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def until_stopped(work: Awaitable[object]) -> bool:
    """Await `work` until it ends or SIGTERM / SIGINT arrives, which cancels it (its `finally`
    blocks run). True when a signal stopped it; an error of `work` propagates."""
    stop = stop_event()
    task = asyncio.ensure_future(work)
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return stop.is_set()
