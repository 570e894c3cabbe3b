"""The least a Flask-under-waitress relay can do: the floor DynLLM is measured against.

One route forwards the request body with a pooled ``requests.Session`` (stream=True) to
one fixed backend and streams the backend's chunks back.  Waitress runs with the same
settings as DynLLM (dynllm/server.py) and, unless ``--no-keepalive-patch`` is given,
with the same keep-alive patch for chunked responses (a copy of ``_KeepAliveTask``, so
this process does not import dynllm and its config stack).

    python bench/minimal_relay.py --backend http://127.0.0.1:PORT --port 0
"""

from __future__ import annotations

import argparse
import sys

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter
from waitress import create_server
from waitress.channel import HTTPChannel
from waitress.task import WSGITask

PASS_HEADERS = ("content-type", "content-length")


class KeepAliveTask(WSGITask):
    """Same decision as dynllm.server._KeepAliveTask: keep HTTP/1.1 alive after chunked."""

    _building_headers = False

    def build_response_header(self) -> bytes:
        self._building_headers = True
        try:
            return super().build_response_header()
        finally:
            self._building_headers = False

    def set_close_on_finish(self) -> None:
        if (
            self._building_headers
            and self.chunked_response
            and self.version == "1.1"
            and self.request.headers.get("CONNECTION", "").lower() != "close"
        ):
            return
        super().set_close_on_finish()


class KeepAliveChannel(HTTPChannel):
    task_class = KeepAliveTask


def make_app(backend: str, threads: int) -> Flask:
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", HTTPAdapter(pool_connections=16, pool_maxsize=threads, max_retries=0))
    app = Flask(__name__)

    @app.post("/v1/chat/completions")
    def relay() -> Response:
        up = session.post(
            backend + request.path,
            data=request.get_data(cache=False),
            headers={"Content-Type": request.content_type or "application/json"},
            stream=True,
            timeout=(10, 600),
        )
        headers = [(k, v) for k, v in up.raw.headers.items() if k.lower() in PASS_HEADERS]

        def body():  # close() (done or client gone) closes the upstream response
            try:
                yield from up.raw.stream(64 * 1024, decode_content=False)
            finally:
                up.close()

        return Response(body(), status=up.status_code, headers=headers, direct_passthrough=True)

    return app


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", required=True, help="http://HOST:PORT of the backend")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=128)
    p.add_argument("--no-keepalive-patch", action="store_true")
    args = p.parse_args()
    server = create_server(
        make_app(args.backend.rstrip("/"), args.threads),
        host=args.host,
        port=args.port,
        threads=args.threads,
        connection_limit=1024,
        send_bytes=1,
        asyncore_use_poll=True,
        max_request_body_size=100 * 1024 * 1024 + 65536,
        ident="minimal-relay",
    )
    if not args.no_keepalive_patch:
        server.channel_class = KeepAliveChannel
    print(f"listening on http://{server.effective_host}:{server.effective_port}", file=sys.stderr)
    sys.stderr.flush()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
