"""Backend ports from the configured range, skipping ports that are in use."""

from __future__ import annotations

import socket
import threading


class NoFreePort(Exception):
    pass


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on ``host:port`` (a bind test, then released).

    ``SO_REUSEADDR`` as the backends' servers set it: connections of a stopped
    backend lingering in TIME_WAIT do not keep its port from a new one (without
    it, a busy DynLLM ran out of ports for a minute at a time).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortPool:
    """Hands out ports of ``[start, end]`` (inclusive), each to one backend at a time."""

    def __init__(self, start: int, end: int) -> None:
        self._start = start
        self._end = end
        self._taken: set[int] = set()
        self._next = start
        self._lock = threading.Lock()

    def reserve(self) -> int:
        """A port no backend of ours holds and nothing else listens on.

        Ports are tried round-robin so that a port just released (whose old
        process may linger a moment) is not handed out again at once.
        """
        size = self._end - self._start + 1
        for _ in range(size):
            with self._lock:
                port = self._next
                self._next = self._start if port >= self._end else port + 1
                if port in self._taken:
                    continue
                self._taken.add(port)
            if port_is_free(port):
                return port
            self.release(port)
        raise NoFreePort(f"no free port in {self._start}-{self._end}")

    def release(self, port: int | None) -> None:
        if port is None:
            return
        with self._lock:
            self._taken.discard(port)

    def in_use(self) -> set[int]:
        with self._lock:
            return set(self._taken)
