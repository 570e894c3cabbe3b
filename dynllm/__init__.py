"""DynLLM: on-demand local inference behind one OpenAI-compatible address."""

from __future__ import annotations

__version__ = "0.1.0"
