"""KServe v2 routes, passed through to the model's OVMS.

``GET /v2/models/{name}`` (metadata) and ``POST /v2/models/{name}/infer`` load
the model on demand, like every other endpoint.  ``GET /v2/models/{name}/ready``
never starts a load: it relays the backend's own answer when the model is
loaded and otherwise says "not ready", so a health checker polling it cannot
make models churn through the VRAM budget; nor does a poll count as use, so it
never keeps a model from its idle unload.  The optional ``/versions/{version}``
segment is passed on.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from flask import Blueprint, Response, jsonify, request

from . import __version__
from .api import RawRequest, check_endpoint, proxy, relay
from .endpoints import Endpoint
from .errors import MethodNotAllowed, ModelNotFound, ModelNotReady
from .services import services

bp = Blueprint("kserve", __name__)

#: What may follow the model name: ``[/versions/{version}][/ready|/infer]``.
_TAIL = re.compile(r"^(?P<version>/versions/[^/]+)?(?P<action>/ready|/infer)?\Z")
#: The same, for a name that is not configured (only to name it in the 404).
_ROUTE = re.compile(r"^(?P<name>.+?)(?:/versions/[^/]+)?(?:/ready|/infer)?\Z", re.DOTALL)


class Route:
    """A KServe model route: the model, the action, and the path to use upstream."""

    def __init__(self, name: str, version: str, action: str) -> None:
        self.name = name
        self.action = action  # "", "ready" or "infer"
        # Built from the parts, each quoted again: the path Flask hands over is
        # already decoded, and a name with '#', '?' or '%' must reach OVMS intact.
        upstream = "/v2/models/" + quote(name, safe="")
        if version:
            upstream += "/versions/" + quote(version, safe="")
        self.upstream = upstream + (f"/{action}" if action else "")


def parse_route(rest: str) -> Route:
    """Read ``rest`` (after ``/v2/models/``), preferring the longest configured model name."""
    best: tuple[str, re.Match[str]] | None = None
    for m in services().config.models:
        if rest == m.name or rest.startswith(m.name + "/"):
            tail = _TAIL.match(rest[len(m.name) :])
            if tail and (best is None or len(m.name) > len(best[0])):
                best = (m.name, tail)
    if best is None:
        guess = _ROUTE.match(rest)
        raise ModelNotFound(
            f"The model '{guess.group('name') if guess else rest}' does not exist", param="model"
        )
    name, tail = best
    version = (tail.group("version") or "")[len("/versions/") :]
    return Route(name, version, (tail.group("action") or "").lstrip("/"))


@bp.get("/v2/models/<path:rest>")
def model_get(rest: str) -> Response:
    route = parse_route(rest)
    if route.action == "infer":
        raise MethodNotAllowed(f"GET is not allowed on {request.path}; use POST")
    if route.action == "ready":
        return ready(route)
    return proxy(Endpoint.KSERVE, RawRequest(b"", route.name), route.upstream)


@bp.post("/v2/models/<path:rest>")
def model_post(rest: str) -> Response:
    route = parse_route(rest)
    if route.action != "infer":
        raise MethodNotAllowed(f"POST is not allowed on {request.path}; use GET")
    body = RawRequest(request.get_data(cache=False), route.name)
    return proxy(Endpoint.KSERVE, body, route.upstream)


def ready(route: Route) -> Response:
    svc = services()
    name = route.name
    cfg = svc.registry.lookup(name)
    check_endpoint(cfg, Endpoint.KSERVE)
    lease = svc.registry.lease_if_loaded(name)
    if lease is None:
        state = svc.registry.state_of(name).value
        raise ModelNotReady(
            f"model '{name}' is not loaded (state: {state}); this route does not load it, "
            f"a request to /v2/models/{name} or /v2/models/{name}/infer does"
        )
    return relay(lease, cfg, Endpoint.KSERVE, RawRequest(b"", name), route.upstream)


@bp.get("/v2/health/live")
def live() -> Response:
    return jsonify({"live": True})


@bp.get("/v2/health/ready")
def server_ready() -> Response:
    return jsonify({"ready": True})


@bp.get("/v2")
def server_metadata() -> Response:
    return jsonify({"name": "dynllm", "version": __version__, "extensions": []})
