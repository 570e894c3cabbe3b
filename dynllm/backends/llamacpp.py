"""llama.cpp ``llama-server``: one process per GGUF model."""

from __future__ import annotations

from ..config import Config, ModelConfig
from .base import Backend

#: llama-server's switch for each non-chat model type.
MODE_FLAGS: dict[str, list[str]] = {
    "llm": [],
    "embedding": ["--embeddings"],
    "rerank": ["--reranking"],
}


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def argv(self, cfg: Config, model: ModelConfig, port: int) -> list[str]:
        return [
            cfg.backend.llamacpp_binary,
            "-m",
            model.path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-ngl",
            str(model.n_gpu_layers),
            "-c",
            str(model.context_size),
            # Responses then carry the public name (llama-server splits aliases on commas).
            *(["--alias", model.name] if "," not in model.name else []),
            *MODE_FLAGS[model.model_type],
            *model.extra_args,
        ]
