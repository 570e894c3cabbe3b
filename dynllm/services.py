"""The objects the views share, kept in ``app.extensions`` rather than module globals."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import current_app

from .config import Config
from .registry import ModelRegistry
from .relay import Upstream

if TYPE_CHECKING:
    from .metrics import Metrics

EXTENSION = "dynllm"


@dataclass
class Services:
    config: Config
    registry: ModelRegistry
    upstream: Upstream
    metrics: Metrics
    started: int = field(default_factory=lambda: int(time.time()))


def services() -> Services:
    """The :class:`Services` of the app handling the current request."""
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]
