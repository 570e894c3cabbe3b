"""The OpenAI-compatible endpoints: parse, lease, relay.  Nothing else."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .endpoints import PATHS, SERVES, Endpoint, endpoints_for
from .errors import DynLLMError, InvalidRequest, ModelNotFound, WrongModelType
from .relay import RelayBody, downstream_headers, upstream_headers
from .services import services

bp = Blueprint("api", __name__)


def _model_entry(cfg: Any, state: str, created: int) -> dict[str, Any]:
    return {
        "id": cfg.name,
        "object": "model",
        "created": created,
        "owned_by": "dynllm",
        "state": state,
        "backend": cfg.backend,
        "model_type": cfg.model_type,
    }


@bp.get("/v1/models")
def list_models() -> Response:
    svc = services()
    states = svc.registry.states()
    data = [_model_entry(m, states[m.name], svc.started) for m in svc.config.models]
    return jsonify({"object": "list", "data": data})


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    svc = services()
    cfg = svc.config.model(model_id)
    if cfg is None:
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
    return jsonify(_model_entry(cfg, svc.registry.states()[cfg.name], svc.started))


def read_model_field(body: bytes) -> str:
    """The ``model`` of a JSON body, with a 400 for anything malformed."""
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object", code="invalid_json")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(doc, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    model = doc.get("model")
    if model is None:
        raise InvalidRequest(
            "you must provide a model parameter", param="model", code="missing_model"
        )
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "'model' must be a non-empty string", param="model", code="invalid_model"
        )
    return model


def proxy(endpoint: Endpoint, model_name: str, body: bytes) -> Response:
    """Lease the model, send the request upstream, return the streaming response."""
    svc = services()
    cfg = svc.registry.lookup(model_name)
    if cfg.model_type not in SERVES[endpoint]:
        served = ", ".join(endpoints_for(cfg.model_type)) or "none"
        raise WrongModelType(
            f"model '{model_name}' (model_type {cfg.model_type}) cannot be used with "
            f"{request.path}; it serves: {served}",
            param="model",
        )
    lease = svc.registry.acquire(model_name)
    try:
        backend = svc.registry.backend_of(model_name)
        upstream_body = backend.rewrite_body(cfg, body, request.environ.get("CONTENT_TYPE", ""))
        url = lease.base_url + backend.upstream_path(cfg, endpoint)
        if request.query_string:
            url += "?" + request.query_string.decode("latin-1")
        resp = svc.upstream.send(
            request.method, url, upstream_body, upstream_headers(request.headers)
        )
    except BaseException:
        lease.release()
        raise
    body_iter = RelayBody(resp, lease, model_name)  # from here on, close() releases the lease
    try:
        body_iter.start()
        out = _RelayResponse(
            body_iter,
            status=resp.status_code,
            headers=downstream_headers(resp),
            direct_passthrough=True,
        )
    except BaseException:
        body_iter.close()
        raise
    if "content-type" not in resp.headers:
        del out.headers["Content-Type"]  # Flask's default would misdescribe the body
    return out


class _RelayResponse(Response):
    """Closes its body (so the lease is released) even if the WSGI server
    rejects the response in ``start_response``, before it ever holds the body."""

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN204
        try:
            return super().__call__(environ, start_response)
        except BaseException:
            self.close()
            raise


def _json_endpoint(endpoint: Endpoint):  # noqa: ANN202
    def view() -> Response:
        body = request.get_data(cache=False)
        return proxy(endpoint, read_model_field(body), body)

    view.__name__ = f"proxy_{endpoint.value}"
    return view


for _ep in (Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS, Endpoint.RERANK):
    bp.add_url_rule(PATHS[_ep], view_func=_json_endpoint(_ep), methods=["POST"])


@bp.get("/health")
def health() -> Response:
    svc = services()
    states = svc.registry.states()
    return jsonify(
        {
            "status": "ok",
            "uptime_seconds": round(time.time() - svc.started, 3),
            "models": len(states),
            "loaded": sum(1 for s in states.values() if s == "loaded"),
        }
    )


__all__ = ["bp", "proxy", "read_model_field", "DynLLMError"]
