"""Counts how often any process opens a file in a folder: Linux inotify (IN_OPEN), through libc.

For the engine tests, as a counter of vLLM's adapter loads that needs no patch of vLLM: every
load of an adapter (vLLM's `LoRAModel.from_local_checkpoint`) opens its `adapter_model.safetensors`,
and a request served from vLLM's adapter cache opens nothing. The kernel queues an event at each
open and close, so the opens a request caused are queued by the time its answer arrives.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path
from types import TracebackType

IN_OPEN = 0x00000020
IN_CLOSE = 0x00000008 | 0x00000010  # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of NUL-padded name


class FileOpens:
    """`with FileOpens(folder) as opens: ...; opens.count(name)`: opens of `folder/name` meanwhile."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = -1
        self._counts: dict[str, int] = {}

    def __enter__(self) -> FileOpens:
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        # Closes too: the kernel merges an event into an identical one queued just before it, so
        # open, open, open would count one; open, close, open, close counts two.
        if self._libc.inotify_add_watch(self._fd, str(self.folder).encode(), IN_OPEN | IN_CLOSE) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch failed on {self.folder}")
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        os.close(self._fd)

    def count(self, name: str) -> int:
        self._drain()
        return self._counts.get(name, 0)

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                _, mask, _, size = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset : offset + size].rstrip(b"\0").decode()
                offset += size
                if mask & IN_OPEN:
                    self._counts[name] = self._counts.get(name, 0) + 1
