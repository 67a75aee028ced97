"""LangChain's standard chat-model suites (`langchain-tests`) for both chat models.

`ChatGuardrail` runs its guarded generation on the tiny keyword model, embedded; the
`GuardrailChatModel` wraps `ScriptedChatModel`, a provider-like fake. Capabilities that do not
apply are switched off here with the reason; docs/integrations.md lists them.
"""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from scripted import ScriptedChatModel, keyword_guard

from langchain_guardrail import ChatGuardrail, GuardrailChatModel


class _ChatGuardrailSetup:
    """`ChatGuardrail` generates with the model the guard serves."""

    @property
    def chat_model_class(self) -> type[ChatGuardrail]:
        return ChatGuardrail

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"guard": keyword_guard(), "max_new_tokens": 24}

    @property
    def has_tool_calling(self) -> bool:
        return False  # the hosted model is a small base model with no tool-call format

    @property
    def has_structured_output(self) -> bool:
        return False  # no JSON mode or tool calls to build structured output on

    @property
    def supports_model_override(self) -> bool:
        return False  # a guard serves one model; `model` names it, it does not switch it


class _WrapperSetup:
    """`GuardrailChatModel` over a scripted provider-like chat model."""

    @property
    def chat_model_class(self) -> type[GuardrailChatModel]:
        return GuardrailChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"llm": ScriptedChatModel(), "guard": keyword_guard()}

    @property
    def has_tool_calling(self) -> bool:
        # Tools bind on the wrapped model and its tool calls pass through once the text is
        # cleared (tests/test_chat_models.py); the scripted model itself has none.
        return False

    @property
    def has_structured_output(self) -> bool:
        return False  # would come from the wrapped model's tool calling, which the fake lacks

    @property
    def model_override_value(self) -> str:
        return "scripted-2"  # passed through to the wrapped model


class TestChatGuardrailUnit(_ChatGuardrailSetup, ChatModelUnitTests):
    pass


class TestChatGuardrailIntegration(_ChatGuardrailSetup, ChatModelIntegrationTests):
    pass


class TestGuardrailChatModelUnit(_WrapperSetup, ChatModelUnitTests):
    pass


class TestGuardrailChatModelIntegration(_WrapperSetup, ChatModelIntegrationTests):
    pass
