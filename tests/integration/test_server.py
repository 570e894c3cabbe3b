"""The waitress server DynLLM builds (in-process, bound to a free port, not run)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from dynllm.app import create_app
from dynllm.config import default_config
from dynllm.server import make_server


@pytest.fixture
def server() -> Iterator[object]:
    cfg = default_config()
    cfg.server.host, cfg.server.port = "127.0.0.1", 0
    srv = make_server(create_app(cfg), cfg)
    yield srv
    srv.close()


def test_wakeup_never_blocks_a_worker_when_the_pipe_is_full(server) -> None:  # noqa: ANN001
    # waitress 3.0.2 writes a wake-up byte while holding a channel lock; with a
    # full pipe that write used to block, and with a client disconnect on top
    # the whole server locked up (bench/stall_repro.py).
    fd = server.trigger.trigger
    filled = 0
    while True:
        try:
            filled += os.write(fd, b"x" * 4096)
        except BlockingIOError:
            break
    assert filled >= 4096
    done = threading.Event()
    t = threading.Thread(target=lambda: (server.pull_trigger(), done.set()), daemon=True)
    t.start()
    assert done.wait(5), "pull_trigger blocked on a full pipe"


def test_server_uses_the_configured_threads_and_connection_limit(server) -> None:  # noqa: ANN001
    assert server.adj.threads == 128
    assert server.adj.connection_limit == 1024
    assert server.adj.send_bytes == 1
