"""`GuardrailMiddleware`: gate an agent's model calls, streamed tokens included.

After-model hooks run once the model call has finished, which is too late for a stream: under
`stream_mode="messages"` the tokens have already reached the consumer. This middleware wraps
the model of each call in a `GuardrailChatModel` instead, so the agent streams only checked
text, and a flagged request is refused before the model runs. Needs `langchain>=1.0`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse

from guardrail.protocols import AsyncGuardProtocol, GuardProtocol
from guardrail.streaming import DEFAULT_REPLACEMENT, OnViolation
from guardrail.types import GuardConfig
from langchain_guardrail.chat_models import GuardrailChatModel


class GuardrailMiddleware(AgentMiddleware):
    """`create_agent(model, tools, middleware=[GuardrailMiddleware(guard=Guard())])`."""

    def __init__(
        self,
        guard: GuardProtocol | AsyncGuardProtocol | None = None,
        *,
        config: GuardConfig | None = None,
        check_input: bool = True,
        check_output: bool = True,
        on_violation: OnViolation = "replace",
        replacement: str = DEFAULT_REPLACEMENT,
        chunk_chars: int = 0,
    ) -> None:
        super().__init__()
        self.guard = guard
        self.options: dict[str, Any] = {
            "guard_config": config, "check_input": check_input, "check_output": check_output,
            "on_violation": on_violation, "replacement": replacement, "chunk_chars": chunk_chars,
        }

    def _guarded(self, request: ModelRequest) -> ModelRequest:
        if isinstance(request.model, GuardrailChatModel):
            return request
        model = GuardrailChatModel(llm=request.model, guard=self.guard, **self.options)
        return request.override(model=model)

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        return handler(self._guarded(request))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        return await handler(self._guarded(request))


__all__ = ["GuardrailMiddleware"]
