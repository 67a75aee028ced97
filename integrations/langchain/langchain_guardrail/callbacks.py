"""`GuardrailCallbackHandler`: record every verdict a guarded chain or model produced.

Verdicts arrive two ways: `GuardrailRunnable` dispatches a `guardrail_verdict` custom event
for each check, and `GuardrailChatModel` puts its verdict in the answer's
`response_metadata["guardrail"]`, read here at the end of each model run. Records hold
scores and labels, never text.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult

from langchain_guardrail._convert import METADATA_KEY, VERDICT_EVENT


@dataclass(frozen=True)
class VerdictRecord:
    """One verdict: which stage, what it said, and the LangChain run it belongs to."""

    stage: str
    label: str
    score: float
    threshold: float
    intercepted: bool
    run_id: UUID | None = None
    source: str = "runnable"
    data: dict[str, Any] = field(default_factory=dict)
    flagged_categories: tuple[str, ...] = ()
    """Categories that fired at this stage (over the whole stream for "stream")."""
    prompt_flagged_categories: tuple[str, ...] = ()
    """Categories that fired on the request, when an answer's record carries them."""

    @classmethod
    def from_data(cls, data: dict[str, Any], *, run_id: UUID | None, source: str) -> VerdictRecord:
        return cls(stage=str(data.get("stage", "")), label=str(data.get("label", "safe")),
                   score=float(data.get("score") or 0.0), threshold=float(data.get("threshold") or 0.0),
                   intercepted=bool(data.get("intercepted", False)), run_id=run_id, source=source,
                   data=dict(data), flagged_categories=tuple(data.get("flagged_categories") or ()),
                   prompt_flagged_categories=tuple(data.get("prompt_flagged_categories") or ()))


class GuardrailCallbackHandler(BaseCallbackHandler):
    """Collects `VerdictRecord`s; pass it in `config={"callbacks": [handler]}`."""

    def __init__(self) -> None:
        self.records: list[VerdictRecord] = []
        self._lock = threading.Lock()

    def _add(self, record: VerdictRecord) -> None:
        with self._lock:
            self.records.append(record)

    @property
    def flagged(self) -> list[VerdictRecord]:
        """Verdicts that labelled something unsafe."""
        return [r for r in self.records if r.label == "unsafe"]

    @property
    def intercepts(self) -> list[VerdictRecord]:
        """Verdicts where the guard acted: a refused request, a replaced answer or a cut stream."""
        return [r for r in self.records if r.intercepted]

    def on_custom_event(
        self, name: str, data: Any, *, run_id: UUID, tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        if name == VERDICT_EVENT and isinstance(data, dict):
            self._add(VerdictRecord.from_data(data, run_id=run_id, source="runnable"))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None,
                   **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                if not isinstance(generation, ChatGeneration):
                    continue
                data = generation.message.response_metadata.get(METADATA_KEY)
                if isinstance(data, dict):
                    self._add(VerdictRecord.from_data(data, run_id=run_id, source="chat_model"))


__all__ = ["GuardrailCallbackHandler", "VerdictRecord"]
