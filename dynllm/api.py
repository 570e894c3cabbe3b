"""The OpenAI-compatible endpoints: parse, lease, relay.  Nothing else."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from flask import Blueprint, Response, jsonify, request

from .bodies import (
    MultipartBody,
    SplicedFile,
    check_model,
    json_string,
    json_with_model,
    parse_json,
)
from .config import ModelConfig
from .endpoints import PATHS, SERVES, Endpoint, endpoints_for
from .errors import BackendUnavailable, DynLLMError, ModelNotFound, NoCapacity, WrongModelType
from .records import Lease
from .relay import RelayBody, downstream_headers, sniff_audio, upstream_headers
from .services import services

bp = Blueprint("api", __name__)
log = logging.getLogger(__name__)


class UpstreamBody(Protocol):
    """A parsed request: the model it names, and its body as it goes upstream."""

    model: str
    #: Replaces the client's Content-Type upstream when set.
    content_type: str | None

    def upstream(self, model: str | None) -> bytes | SplicedFile: ...


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


class JsonRequest:
    """A JSON request body and the model it names."""

    content_type = None
    replayable = True

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.doc = parse_json(raw)
        self.model = check_model(self.doc.get("model"))

    def upstream(self, model: str | None) -> bytes:
        return self.raw if model is None else json_with_model(self.doc, model)


class RawRequest:
    """A body forwarded as it is (the model comes from the URL)."""

    content_type = None
    replayable = True

    def __init__(self, raw: bytes, model: str) -> None:
        self.raw = raw
        self.model = model

    def upstream(self, model: str | None) -> bytes:
        return self.raw


def check_endpoint(cfg: ModelConfig, endpoint: Endpoint) -> None:
    """A 400 naming the endpoints the model does serve, if ``endpoint`` is not one."""
    backend = services().registry.backend_of(cfg.name)
    if cfg.model_type not in SERVES[endpoint] or not backend.serves(endpoint):
        served = ", ".join(endpoints_for(cfg.model_type, backend.serves)) or "none"
        raise WrongModelType(
            f"model '{cfg.name}' (model_type {cfg.model_type}) cannot be used with "
            f"{request.path}; it serves: {served}",
            param="model",
        )


def proxy(endpoint: Endpoint, req: UpstreamBody, path: str | None = None) -> Response:
    """Lease the model, send the request upstream, return the streaming response.

    ``path`` is the public path to map to the backend's route (the request's own
    by default).
    """
    svc = services()
    started = time.perf_counter()
    cfg = svc.registry.lookup(req.model)
    try:
        check_endpoint(cfg, endpoint)
        lease = svc.registry.acquire(req.model)
        try:
            return relay(lease, cfg, endpoint, req, path, started)
        except BackendUnavailable:
            # The backend died under this request (killed, crashed) before it
            # answered: nothing reached the client yet, so start it again and
            # send the request once more, if the body can be sent twice.
            replayable = getattr(req, "replayable", False)  # a spooled upload is not
            if not replayable or not svc.registry.backend_died(lease):
                raise
            log.warning("model=%s backend died before answering; retrying once", cfg.name)
            lease = svc.registry.acquire(req.model)
            return relay(lease, cfg, endpoint, req, path, started)
    except DynLLMError as exc:
        svc.metrics.request_done(
            cfg.name, endpoint.value, exc.status, time.perf_counter() - started
        )
        if isinstance(exc, NoCapacity):
            svc.metrics.refused.labels(cfg.name).inc()
        raise


def relay(
    lease: Lease,
    cfg: ModelConfig,
    endpoint: Endpoint,
    req: UpstreamBody,
    path: str | None = None,
    started: float | None = None,
) -> Response:
    """Send the request to the leased backend; the lease is released when the response ends.

    With ``started`` (a ``perf_counter`` reading), the request is counted in the metrics.
    """
    svc = services()
    try:
        backend = svc.registry.backend_of(cfg.name)
        backend_model = backend.upstream_model(cfg)
        url = lease.base_url + backend.upstream_path(cfg, endpoint, path or request.path)
        if request.query_string:
            url += "?" + request.query_string.decode("latin-1")
        headers = upstream_headers(request.headers)
        if req.content_type is not None:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            headers["Content-Type"] = req.content_type
        resp = svc.upstream.send(request.method, url, req.upstream(backend_model), headers)
    except BaseException:
        lease.release()
        raise
    rename = None
    if backend_model is not None and backend_model != cfg.name:
        rename = (json_string(backend_model), json_string(cfg.name))
    on_close = None
    if started is not None:
        status = resp.status_code

        def on_close() -> None:
            svc.metrics.request_done(
                cfg.name, endpoint.value, status, time.perf_counter() - started
            )

    # From here on, close() releases the lease (and counts the request).
    add_done = not backend.ends_streams_with_done
    body_iter = RelayBody(resp, lease, cfg.name, rename, on_close, add_done)
    try:
        body_iter.start()
        if started is not None:
            svc.metrics.first_byte(cfg.name, endpoint.value, time.perf_counter() - started)
        out = _RelayResponse(
            body_iter,
            status=resp.status_code,
            headers=downstream_headers(resp, body_changed=rename is not None or body_iter.adds),
            direct_passthrough=True,
        )
    except BaseException:
        body_iter.close(counted=False)  # the caller answers (and counts) the error
        raise
    if "content-type" not in resp.headers:
        del out.headers["Content-Type"]  # Flask's default would misdescribe the body
    if endpoint is Endpoint.SPEECH and resp.status_code == 200:
        # Some servers (OVMS) label the audio they return as JSON.
        audio = sniff_audio(body_iter.first)
        if audio and not out.headers.get("Content-Type", "").startswith("audio/"):
            out.headers["Content-Type"] = audio
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
        return proxy(endpoint, JsonRequest(request.get_data(cache=False)))

    view.__name__ = f"proxy_{endpoint.value}"
    return view


def _multipart_endpoint(endpoint: Endpoint):  # noqa: ANN202
    def view() -> Response:
        body = MultipartBody(request.stream, request.content_type or "")
        try:
            return proxy(endpoint, body)
        finally:
            # The upload is on its way upstream (or refused) once proxy() returns:
            # requests sends the whole body before it reads the answer.
            body.close()

    view.__name__ = f"proxy_{endpoint.value}"
    return view


JSON_ENDPOINTS = (
    Endpoint.CHAT,
    Endpoint.COMPLETIONS,
    Endpoint.EMBEDDINGS,
    Endpoint.RERANK,
    Endpoint.SPEECH,
    Endpoint.IMAGES,
)
MULTIPART_ENDPOINTS = (Endpoint.TRANSCRIPTIONS, Endpoint.TRANSLATIONS)

for _ep in JSON_ENDPOINTS:
    bp.add_url_rule(PATHS[_ep], view_func=_json_endpoint(_ep), methods=["POST"])
for _ep in MULTIPART_ENDPOINTS:
    bp.add_url_rule(PATHS[_ep], view_func=_multipart_endpoint(_ep), methods=["POST"])


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


__all__ = ["bp", "proxy", "relay", "check_endpoint", "RawRequest", "DynLLMError"]
