"""The waitress server DynLLM runs under (the only module that imports waitress).

waitress 3.0.x ends every response that has no Content-Length by closing the
connection, even though the response is sent chunked and the terminating
chunk already marks its end.  For a proxy whose typical answer is a stream,
that costs a new TCP connection per request and stops nginx from keeping its
upstream connections alive.  :class:`_KeepAliveTask` keeps HTTP/1.1
connections open after a *completed* chunked response; a response that fails
half-way still closes the connection (waitress does that before this code is
reached), so a client never mistakes a cut stream for a finished one.
"""

from __future__ import annotations

from typing import Any

from waitress import create_server
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import WSGITask

from .config import Config


class _KeepAliveTask(WSGITask):
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


class _KeepAliveChannel(HTTPChannel):
    task_class = _KeepAliveTask


def make_server(app: Any, cfg: Config, chunked_keepalive: bool = True) -> BaseWSGIServer:
    """A bound (not yet running) waitress server for ``app``."""
    server = create_server(
        app,
        host=cfg.server.host,
        port=cfg.server.port,
        threads=cfg.server.threads,
        connection_limit=cfg.server.connection_limit,
        send_bytes=1,  # flush every chunk at once: a stream must not sit in a buffer
        asyncore_use_poll=True,  # no 1024-descriptor select() limit
        max_request_body_size=int(cfg.server.max_body_mb * 1024 * 1024) + 65536,
        ident="dynllm",
    )
    if chunked_keepalive and isinstance(server, BaseWSGIServer):
        server.channel_class = _KeepAliveChannel  # type: ignore[misc]
    return server  # type: ignore[return-value]
