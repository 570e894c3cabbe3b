"""The waitress server DynLLM runs under (the only module that imports waitress).

waitress 3.0.x ends every response that has no Content-Length by closing the
connection, even though the response is sent chunked and the terminating
chunk already marks its end.  For a proxy whose typical answer is a stream,
that costs a new TCP connection per request and stops nginx from keeping its
upstream connections alive.  :class:`KeepAliveTask` keeps HTTP/1.1
connections open after a *completed* chunked response; a response that fails
half-way still closes the connection (waitress does that before this code is
reached), so a client never mistakes a cut stream for a finished one.

The second change fixes a lock-up of waitress 3.0.2 found by the benchmarks
(``bench/stall_repro.py``): a worker thread whose client reads slowly wakes the
main loop by writing a byte to a pipe *while holding its channel's lock*, and
that write blocks once the pipe is full.  If such a client then disconnects,
the main loop waits for that lock, stops draining the pipe, and the whole
server stops for good.  A full pipe already guarantees that the main loop will
wake, so :func:`nonblocking_wakeups` simply drops the byte in that case.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from waitress import create_server
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask, WSGITask

if TYPE_CHECKING:  # keep this module free of the config stack (bench/minimal_relay.py)
    from .config import Config


class KeepAliveTask(WSGITask):
    _building_headers = False

    def build_response_header(self) -> bytes:
        self._building_headers = True
        try:
            return super().build_response_header()  # type: ignore[no-any-return]
        finally:
            self._building_headers = False

    def set_close_on_finish(self) -> None:
        # Called while building headers right after the response was switched
        # to chunked encoding: that alone is no reason to close.
        if (
            self._building_headers
            and self.chunked_response
            and self.version == "1.1"
            and self.request.headers.get("CONNECTION", "").lower() != "close"
        ):
            return
        super().set_close_on_finish()


#: Codes for the errors waitress answers itself (before DynLLM sees the request).
_WAITRESS_CODES = {400: "bad_request", 413: "request_too_large", 431: "headers_too_large"}


class JsonErrorTask(ErrorTask):
    """waitress's own errors (unparsable request, body over its limit, app crash
    before the first byte) as OpenAI-shaped JSON instead of text/plain."""

    def execute(self) -> None:
        e = self.request.error
        code = int(e.code)
        body = json.dumps(
            {
                "error": {
                    "message": f"{e.reason}: {e.body}".strip(": "),
                    "type": "invalid_request_error" if code < 500 else "server_error",
                    "param": None,
                    "code": _WAITRESS_CODES.get(
                        code, "http_error" if code < 500 else "internal_error"
                    ),
                    "source": "dynllm",
                }
            }
        ).encode()
        self.status = f"{code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


class KeepAliveChannel(JsonErrorChannel):
    task_class = KeepAliveTask


def nonblocking_wakeups(server: BaseWSGIServer) -> None:
    """Make the main loop's wake-up pipe never block a worker thread."""
    trigger = server.trigger
    fd = trigger.trigger  # the pipe's write end
    os.set_blocking(fd, False)

    def pull() -> None:
        try:  # noqa: SIM105 (called per flushed chunk; cheaper than contextlib.suppress)
            os.write(fd, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the main loop has wake-ups pending anyway

    trigger._physical_pull = pull


def proxy_options(cfg: Config) -> dict[str, Any]:
    """waitress settings for a reverse proxy in front: its forwarded headers are
    believed only when it is configured, and dropped from anyone else."""
    if not cfg.server.trusted_proxy:
        return {"clear_untrusted_proxy_headers": True}
    return {
        "trusted_proxy": cfg.server.trusted_proxy,
        "trusted_proxy_count": 1,
        "trusted_proxy_headers": set(cfg.server.trusted_proxy_headers),
        "clear_untrusted_proxy_headers": True,
    }


def make_server(app: Any, cfg: Config, chunked_keepalive: bool = True) -> BaseWSGIServer:
    """A bound (not yet running) waitress server for ``app``.

    :param chunked_keepalive: keep connections open after chunked responses
        (off only to measure what it saves, see ``bench/``).
    """
    server = create_server(
        app,
        host=cfg.server.host,
        port=cfg.server.port,
        threads=cfg.server.threads,
        connection_limit=cfg.server.connection_limit,
        # send_bytes stays at waitress 3's default of 1: every chunk is flushed at once.
        asyncore_use_poll=True,  # no 1024-descriptor select() limit
        max_request_body_size=int(cfg.server.max_body_mb * 1024 * 1024) + 65536,
        recv_bytes=65536,  # uploads: fewer, larger reads than waitress's 8 KiB
        ident="dynllm",
        **proxy_options(cfg),
    )
    if isinstance(server, BaseWSGIServer):  # one listening socket, as configured here
        nonblocking_wakeups(server)
        server.channel_class = (  # type: ignore[misc]
            KeepAliveChannel if chunked_keepalive else JsonErrorChannel
        )
    return server  # type: ignore[return-value]
