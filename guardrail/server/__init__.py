"""The sidecar: a FastAPI app hosting the safety-augmented model behind a batcher."""

from __future__ import annotations

from guardrail.server.app import create_app
from guardrail.server.settings import Settings

__all__ = ["Settings", "create_app"]
