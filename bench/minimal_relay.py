"""The least a Flask-under-waitress relay can do: the floor DynLLM is measured against.

One route forwards the request body with a pooled ``requests.Session`` (stream=True) to
one fixed backend and streams the backend's chunks back.  Waitress runs with the same
settings and the same two patches as DynLLM (imported from ``dynllm/server.py``, which
pulls in nothing but waitress): the wake-up pipe that never blocks and, unless
``--no-keepalive-patch`` is given, keep-alive after chunked responses.

    python bench/minimal_relay.py --backend http://127.0.0.1:PORT --port 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter
from waitress import create_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dynllm.server import KeepAliveChannel, nonblocking_wakeups  # noqa: E402  (waitress only)

PASS_HEADERS = ("content-type", "content-length")


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
        asyncore_use_poll=True,
        max_request_body_size=100 * 1024 * 1024 + 65536,
        ident="minimal-relay",
    )
    nonblocking_wakeups(server)  # the same waitress lock-up fix as DynLLM
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
