"""Operator endpoints under ``/admin``."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .errors import InvalidRequest, UnsupportedMediaType
from .process import log_tail
from .services import services

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _model_from_body() -> str:
    # A browser sends a cross-site POST without asking first only for "simple"
    # content types; insisting on JSON keeps other web pages from driving /admin.
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send the body as JSON with 'Content-Type: application/json'")
    raw = request.get_data(cache=False)
    try:
        doc: Any = json.loads(raw) if raw else None
    except ValueError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), str) or not doc["model"]:
        raise InvalidRequest(
            'expected a JSON object like {"model": "<name>"}', param="model", code="missing_model"
        )
    return doc["model"]


@bp.get("/models")
def models() -> Response:
    return jsonify(services().registry.snapshot())


#: Most lines ``/logs`` returns, and most bytes of the file it reads for them.
MAX_LOG_LINES = 10_000
MAX_LOG_BYTES = 4 * 1024 * 1024


@bp.get("/models/<path:name>/logs")
def logs(name: str) -> Response:
    """The tail of a model's backend log: ``?lines=N`` (default 100), all runs."""
    raw = request.args.get("lines", "100")
    if (
        not (raw.isascii() and raw.isdigit() and len(raw) <= 6)
        or not 1 <= int(raw) <= MAX_LOG_LINES
    ):
        raise InvalidRequest(
            f"lines must be a whole number from 1 to {MAX_LOG_LINES}, not {raw!r}", param="lines"
        )
    path = services().registry.log_path(name)  # 404 for an unknown model
    text = log_tail(path, int(raw), MAX_LOG_BYTES, latest_run_only=False)
    return jsonify(
        {"model": name, "log_path": str(path), "lines": text.splitlines() if text else []}
    )


@bp.post("/models/unload")
def unload() -> Response:
    """Stop a model now.  A busy (serving or loading) model is refused with 409."""
    name = _model_from_body()
    registry = services().registry
    before = registry.unload(name, reason="admin unload")
    return jsonify(
        {"model": name, "previous_state": before, "state": registry.state_of(name).value}
    )


@bp.post("/models/load")
def load() -> Response:
    """Load a model now (waiting until it is ready) without sending it a request."""
    name = _model_from_body()
    registry = services().registry
    registry.load(name)
    return jsonify({"model": name, "state": registry.state_of(name).value})
