"""KServe v2 routes, passed through to the model's OVMS.

``GET /v2/models/{name}`` (metadata) and ``POST /v2/models/{name}/infer`` load
the model on demand, like every other endpoint.  ``GET /v2/models/{name}/ready``
never starts a load: it relays the backend's own answer when the model is
loaded and otherwise says "not ready", so a health checker polling it cannot
make models churn through the VRAM budget.  The optional
``/versions/{version}`` segment is passed through unchanged.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, request

from . import __version__
from .api import RawRequest, check_endpoint, proxy, relay
from .endpoints import Endpoint
from .errors import MethodNotAllowed, ModelNotReady
from .services import services

bp = Blueprint("kserve", __name__)

#: ``{name}[/versions/{version}][/ready|/infer]`` after ``/v2/models/``.
_ROUTE = re.compile(r"^(?P<name>.+?)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?$")


def _split(rest: str) -> tuple[str, str]:
    """Model name and action (``""``, ``"ready"`` or ``"infer"``) of a KServe model route."""
    m = _ROUTE.match(rest)
    if m is None:  # an empty name; the lookup reports it
        return rest, ""
    name, action = m.group("name"), (m.group("action") or "").lstrip("/")
    # A configured name wins over a reading of its tail as a route ("a/ready").
    if action and services().config.model(rest) is not None:
        return rest, ""
    return name, action


@bp.get("/v2/models/<path:rest>")
def model_get(rest: str) -> Response:
    name, action = _split(rest)
    if action == "infer":
        return _method_not_allowed("POST")
    if action == "ready":
        return ready(name)
    return proxy(Endpoint.KSERVE, RawRequest(b"", name))


@bp.post("/v2/models/<path:rest>")
def model_post(rest: str) -> Response:
    name, action = _split(rest)
    if action != "infer":
        return _method_not_allowed("GET")
    return proxy(Endpoint.KSERVE, RawRequest(request.get_data(cache=False), name))


def ready(name: str) -> Response:
    svc = services()
    cfg = svc.registry.lookup(name)
    check_endpoint(cfg, Endpoint.KSERVE)
    lease = svc.registry.lease_if_loaded(name)
    if lease is None:
        state = svc.registry.state_of(name).value
        raise ModelNotReady(
            f"model '{name}' is not loaded (state: {state}); this route does not load it, "
            f"a request to /v2/models/{name} or /v2/models/{name}/infer does"
        )
    return relay(lease, cfg, Endpoint.KSERVE, RawRequest(b"", name))


def _method_not_allowed(allowed: str) -> Response:
    raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {allowed}")


@bp.get("/v2/health/live")
def live() -> Response:
    return jsonify({"live": True})


@bp.get("/v2/health/ready")
def server_ready() -> Response:
    return jsonify({"ready": True})


@bp.get("/v2")
def server_metadata() -> Response:
    return jsonify({"name": "dynllm", "version": __version__, "extensions": []})
