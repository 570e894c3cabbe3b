"""The Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from . import admin, api, auth, kserve, metrics, ui
from .config import Config, default_config
from .errors import DynLLMError, error_body
from .registry import ModelRegistry
from .relay import Upstream
from .services import EXTENSION, Services

log = logging.getLogger("dynllm.app")

#: werkzeug's HTTP errors as OpenAI error (type, code).
_HTTP_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "unauthorized"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    411: ("invalid_request_error", "length_required"),
    413: ("invalid_request_error", "request_too_large"),
    414: ("invalid_request_error", "uri_too_long"),
    415: ("invalid_request_error", "unsupported_media_type"),
    431: ("invalid_request_error", "headers_too_large"),
}


def create_app(
    config: Config | None = None,
    registry: ModelRegistry | None = None,
    upstream: Upstream | None = None,
) -> Flask:
    """Build the WSGI app.  Without arguments: no models, nothing persisted (tests)."""
    config = config or default_config()
    registry = registry or ModelRegistry(config)
    upstream = upstream or Upstream(
        pool_size=config.server.threads, request_timeout=config.backend.request_timeout_seconds
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(config.server.max_body_mb * 1024 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # "/v1//chat/completions" would otherwise get an HTML redirect; let it be a JSON 404.
    app.url_map.merge_slashes = False
    app.extensions[EXTENSION] = Services(
        config=config, registry=registry, upstream=upstream, metrics=metrics.Metrics(registry)
    )
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(kserve.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(ui.bp)
    app.before_request(auth.Keys(config).check)

    @app.errorhandler(DynLLMError)
    def dynllm_error(exc: DynLLMError) -> tuple[Response, int, dict[str, str]]:
        return jsonify(exc.body()), exc.status, exc.headers

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
        status = exc.code or 500
        type_, code = _HTTP_CODES.get(status, ("invalid_request_error", "http_error"))
        message = exc.description or exc.name
        if status == 413:
            message = (
                f"request body larger than the limit of {config.server.max_body_mb:g} MiB "
                "(server.max_body_mb)"
            )
        headers = {}
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return jsonify(error_body(message, type_, code)), status, headers

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return jsonify(
            error_body(f"internal error: {type(exc).__name__}", "server_error", "internal_error")
        ), 500

    return app
