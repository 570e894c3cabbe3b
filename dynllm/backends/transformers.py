"""Hugging Face ``transformers serve``: one process per model, pinned to it.

The model is given on the command line, so the server loads it before it
binds its port and ``GET /health`` answering 200 means the model is ready.
A pinned server only accepts requests whose ``model`` is that same value (the
local path, or ``path@revision``), so the views rewrite the public name to it
and back.  Flags are passed only for the options the config sets.
"""

from __future__ import annotations

from ..config import Config, ModelConfig
from ..endpoints import Endpoint
from .base import Backend


def model_ref(model: ModelConfig) -> str:
    """What ``transformers serve`` is given as the model: ``path`` or ``path@revision``."""
    return f"{model.path}@{model.revision}" if model.revision else model.path


class TransformersBackend(Backend):
    name = "transformers"
    ends_streams_with_done = False  # its streams just stop after the usage chunk

    def argv(self, cfg: Config, model: ModelConfig, port: int) -> list[str]:
        argv = [
            cfg.backend.transformers_binary,
            "serve",
            model_ref(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        if model.device:
            argv += ["--device", model.device]
        if model.dtype:
            argv += ["--dtype", model.dtype]
        if model.quantization != "none":
            argv += ["--quantization", model.quantization]
        if model.trust_remote_code:
            argv.append("--trust-remote-code")
        if model.compile_model:
            argv.append("--compile")
        if model.continuous_batching:
            argv.append("--continuous-batching")
        if model.attn_implementation:
            argv += ["--attn-implementation", model.attn_implementation]
        if model.model_timeout is not None:
            argv += ["--model-timeout", str(model.model_timeout)]
        return argv + model.extra_args

    def serves(self, endpoint: Endpoint) -> bool:
        return endpoint is not Endpoint.TRANSLATIONS  # transformers serve only transcribes

    def upstream_model(self, model: ModelConfig) -> str | None:
        return model_ref(model)
