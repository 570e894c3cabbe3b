"""The public endpoints and which model types each one serves.

One table, used by the views (to refuse a model on the wrong endpoint) and by
the backends (to map an endpoint to the backend's own route).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class Endpoint(StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RERANK = "rerank"
    TRANSCRIPTIONS = "transcriptions"
    TRANSLATIONS = "translations"
    SPEECH = "speech"
    IMAGES = "images"
    KSERVE = "kserve"


#: Public path of each OpenAI-style endpoint.
PATHS: dict[Endpoint, str] = {
    Endpoint.CHAT: "/v1/chat/completions",
    Endpoint.COMPLETIONS: "/v1/completions",
    Endpoint.EMBEDDINGS: "/v1/embeddings",
    Endpoint.RERANK: "/v1/rerank",
    Endpoint.TRANSCRIPTIONS: "/v1/audio/transcriptions",
    Endpoint.TRANSLATIONS: "/v1/audio/translations",
    Endpoint.SPEECH: "/v1/audio/speech",
    Endpoint.IMAGES: "/v1/images/generations",
}

#: Model types each endpoint accepts.
SERVES: dict[Endpoint, frozenset[str]] = {
    Endpoint.CHAT: frozenset({"llm"}),
    Endpoint.COMPLETIONS: frozenset({"llm"}),
    Endpoint.EMBEDDINGS: frozenset({"embedding"}),
    Endpoint.RERANK: frozenset({"rerank"}),
    Endpoint.TRANSCRIPTIONS: frozenset({"transcription"}),
    Endpoint.TRANSLATIONS: frozenset({"transcription"}),
    Endpoint.SPEECH: frozenset({"speech"}),
    Endpoint.IMAGES: frozenset({"image_generation"}),
    Endpoint.KSERVE: frozenset({"classification", "detection", "segmentation", "ocr"}),
}


def endpoints_for(
    model_type: str, has_route: Callable[[Endpoint], bool] = lambda e: True
) -> list[str]:
    """Public paths that serve ``model_type`` on a backend with ``has_route`` (for messages)."""
    out = [
        PATHS[e]
        for e, types in SERVES.items()
        if model_type in types and e in PATHS and has_route(e)
    ]
    if model_type in SERVES[Endpoint.KSERVE]:
        out.append("/v2/models/{name}/infer")
    return out
