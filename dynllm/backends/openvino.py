"""OpenVINO Model Server (``ovms``): one process per model, REST only.

Two ways to start it, by model type:

* the config flow (``llm``, ``embedding``, ``rerank`` and the KServe-only
  vision types): DynLLM writes a one-model OVMS config file and starts
  ``ovms --config_path FILE``; readiness is the KServe model-ready route;
* task mode (``transcription``, ``speech``, ``image_generation``):
  ``ovms --model_path DIR --model_name NAME --task ...`` (OVMS 2026.2 and
  later; before that ``--task`` meant "download from the hub"); readiness is
  an ``OPTIONS`` request on the task's route, then the server-wide ready route.

gRPC is off (``--port 0``) and REST listens on loopback only.  OVMS serves the
model under its DynLLM name, so request bodies need no rewriting.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from ..config import Config, ModelConfig, safe_filename
from ..endpoints import PATHS, Endpoint
from .base import Backend, Probe

#: OVMS ``--task`` for the model types that use task mode.
TASKS: dict[str, str] = {
    "transcription": "speech2text",
    "speech": "text2speech",
    "image_generation": "image_generation",
}

#: OVMS's own route for each OpenAI-style endpoint.
V3_PATHS: dict[Endpoint, str] = {
    Endpoint.CHAT: "/v3/chat/completions",
    Endpoint.COMPLETIONS: "/v3/completions",
    Endpoint.EMBEDDINGS: "/v3/embeddings",
    Endpoint.RERANK: "/v3/rerank",
    Endpoint.TRANSCRIPTIONS: "/v3/audio/transcriptions",
    Endpoint.TRANSLATIONS: "/v3/audio/translations",
    Endpoint.SPEECH: "/v3/audio/speech",
    Endpoint.IMAGES: "/v3/images/generations",
}

#: The route probed with ``OPTIONS`` for each task-mode model type.
TASK_PROBES: dict[str, str] = {
    "transcription": V3_PATHS[Endpoint.TRANSCRIPTIONS],
    "speech": V3_PATHS[Endpoint.SPEECH],
    "image_generation": V3_PATHS[Endpoint.IMAGES],
}


def config_path(cfg: Config, model: ModelConfig) -> str:
    """Where the OVMS config file for ``model`` is written."""
    return str(cfg.run_dir() / f"{safe_filename(model.name)}.ovms.json")


def ovms_config(model: ModelConfig) -> dict[str, object]:
    """The one-model OVMS config document for the config flow."""
    entry: dict[str, object] = {
        "name": model.name,
        "base_path": model.path,
        "target_device": model.target_device,
    }
    if model.ovms_shape:
        entry["shape"] = model.ovms_shape
    return {"model_config_list": [{"config": entry}]}


class OpenVINOBackend(Backend):
    name = "openvino"

    def argv(self, cfg: Config, model: ModelConfig, port: int) -> list[str]:
        common = ["--port", "0", "--rest_port", str(port), "--rest_bind_address", "127.0.0.1"]
        task = TASKS.get(model.model_type)
        if task is None:
            head = ["--config_path", config_path(cfg, model)]
        else:
            head = [
                "--model_path",
                model.path,
                "--model_name",
                model.name,
                "--task",
                task,
                "--target_device",
                model.target_device,
            ]
        return [cfg.backend.ovms_binary, *head, *common, *model.extra_args]

    def files(self, cfg: Config, model: ModelConfig) -> dict[str, str]:
        if model.model_type in TASKS:
            return {}
        return {config_path(cfg, model): json.dumps(ovms_config(model), indent=2) + "\n"}

    def readiness(self, model: ModelConfig) -> tuple[Probe, ...]:
        # OVMS binds its REST port before it loads anything, and answers OPTIONS
        # from then on, so the server-wide ready route (200 once loading is over)
        # is what tells that the model has finished loading.
        done = Probe("GET", "/v2/health/ready")
        route = TASK_PROBES.get(model.model_type)
        if route is not None:
            return (Probe("OPTIONS", route, frozenset({200, 204})), done)
        # In the config flow OVMS stays up when the model fails to load; once
        # loading is over, the model's own ready route is the verdict.
        return (done, Probe("GET", f"/v2/models/{quote(model.name, safe='')}/ready", final=True))

    def env(self, cfg: Config, model: ModelConfig) -> dict[str, str | None]:
        # OVMS reads an API key from $API_KEY; DynLLM's requests carry none.
        return {"API_KEY": None}

    def upstream_path(self, model: ModelConfig, endpoint: Endpoint, path: str) -> str:
        if path == PATHS.get(endpoint):
            return V3_PATHS[endpoint]
        return path  # KServe routes are the same on both sides
