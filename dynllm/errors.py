"""Client-visible failures, each knowing its HTTP status and OpenAI error shape.

Errors raised by DynLLM itself carry ``"source": "dynllm"`` in the body, so a
client (or a person reading logs) can tell them apart from errors a backend
returned, which are relayed unchanged.
"""

from __future__ import annotations

from typing import Any


class DynLLMError(Exception):
    """Base class: an error DynLLM answers with itself."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.param = param

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped JSON body."""
        return error_body(self.message, self.type, self.code, self.param)


def error_body(
    message: str, type_: str, code: str | int | None, param: str | None = None
) -> dict[str, Any]:
    """Build ``{"error": {...}}`` the way OpenAI clients parse it."""
    return {
        "error": {
            "message": message,
            "type": type_,
            "param": param,
            "code": code,
            "source": "dynllm",
        }
    }


class InvalidRequest(DynLLMError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class WrongModelType(InvalidRequest):
    code = "model_type_mismatch"


class Unauthorized(DynLLMError):
    """A guarded route without a valid ``Authorization: Bearer`` key."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="dynllm"'})


class NotFound(DynLLMError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(DynLLMError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class UnsupportedMediaType(DynLLMError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class ModelBusy(DynLLMError):
    """Admin unload of a model that is serving or starting."""

    status = 409
    type = "conflict_error"
    code = "model_busy"


class PayloadTooLarge(DynLLMError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class ModelUnavailable(DynLLMError):
    """The configuration makes the model impossible to start (too big, no file)."""

    status = 500
    type = "server_error"
    code = "model_unavailable"


class ModelNotReady(DynLLMError):
    """KServe readiness of a model that is not loaded (the route never loads one)."""

    status = 503
    type = "server_error"
    code = "model_not_ready"


class BackendUnavailable(DynLLMError):
    """The backend went away or refused the connection."""

    status = 502
    type = "server_error"
    code = "backend_unavailable"


class NoCapacity(DynLLMError):
    """No eviction plan frees enough VRAM because the candidates are busy."""

    status = 503
    type = "server_error"
    code = "insufficient_vram"


class LoadFailed(DynLLMError):
    """The backend could not be started; the message carries its last log lines."""

    status = 503
    type = "server_error"
    code = "backend_load_failed"


class ShuttingDown(DynLLMError):
    status = 503
    type = "server_error"
    code = "shutting_down"


class BackendTimeout(DynLLMError):
    status = 504
    type = "server_error"
    code = "backend_timeout"
