"""LangChain integration for guardrail.

`GuardrailRunnable` guards any chain, `GuardrailChatModel` wraps any chat model,
`ChatGuardrail` is the guard's own guarded generation as a chat model,
`GuardrailCallbackHandler` records verdicts, and `GuardrailMiddleware` (with the `langchain`
package installed: `pip install "langchain-guardrail[agents]"`) gates an agent's model calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.errors import GuardrailViolation
from langchain_guardrail.callbacks import GuardrailCallbackHandler, VerdictRecord
from langchain_guardrail.chat_guardrail import ChatGuardrail
from langchain_guardrail.chat_models import GuardrailChatModel
from langchain_guardrail.runnables import PROMPT_METADATA_KEY, GuardrailRunnable

if TYPE_CHECKING:
    from langchain_guardrail.middleware import GuardrailMiddleware

__version__ = "0.1.0"

__all__ = [
    "PROMPT_METADATA_KEY",
    "ChatGuardrail",
    "GuardrailCallbackHandler",
    "GuardrailChatModel",
    "GuardrailMiddleware",
    "GuardrailRunnable",
    "GuardrailViolation",
    "VerdictRecord",
]


def __getattr__(name: str) -> Any:
    if name == "GuardrailMiddleware":  # needs the optional `langchain` package
        from langchain_guardrail.middleware import GuardrailMiddleware

        return GuardrailMiddleware
    raise AttributeError(f"module 'langchain_guardrail' has no attribute {name!r}")
