"""What tracers and cost tracking see: model name, LangSmith params and usage, invoke and stream."""

from __future__ import annotations

import pytest
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.messages import AIMessageChunk
from scripted import ScriptedChatModel, keyword_guard

from langchain_guardrail import ChatGuardrail, GuardrailChatModel


def merged(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def test_chat_guardrail_reports_usage_under_its_model_name() -> None:
    chat = ChatGuardrail(guard=keyword_guard(), model="tiny-keyword", max_tokens=6)
    with get_usage_metadata_callback() as usage:
        answer = chat.invoke("Tell me a story.")
        streamed = merged(list(chat.stream("Tell me a story.")))
    assert answer.response_metadata["model_name"] == "tiny-keyword"
    assert streamed.response_metadata["model_name"] == "tiny-keyword"  # set once, not concatenated
    assert answer.usage_metadata is not None and streamed.usage_metadata == answer.usage_metadata
    assert answer.usage_metadata["output_tokens"] == 6 and answer.usage_metadata["input_tokens"] > 0
    total = usage.usage_metadata["tiny-keyword"]
    assert total["output_tokens"] == 12 and total["input_tokens"] == 2 * answer.usage_metadata["input_tokens"]


def test_chat_guardrail_params_and_model_selection() -> None:
    chat = ChatGuardrail(guard=keyword_guard(), max_tokens=10, temperature=0.5, stop=["."])
    assert chat.max_new_tokens == 10 and chat.model_name == "guardrail"
    assert chat._get_ls_params() == {"ls_provider": "guardrail", "ls_model_name": "guardrail",
                                     "ls_model_type": "chat", "ls_temperature": 0.5, "ls_max_tokens": 10,
                                     "ls_stop": ["."]}
    assert chat._get_ls_params(stop=["!"], max_tokens=3)["ls_stop"] == ["!"]
    assert chat.invoke("Tell me a story.", model="guardrail").text is not None  # naming its own model is fine
    with pytest.raises(ValueError, match="cannot select another"):
        chat.invoke("Tell me a story.", model="gpt-4o")


def test_wrapper_reports_the_wrapped_model() -> None:
    model = GuardrailChatModel(llm=ScriptedChatModel(), guard=keyword_guard())
    params = model._get_ls_params()
    assert (params["ls_provider"], params["ls_model_name"], params["ls_model_type"]) == \
        ("scripted", "scripted-1", "chat")
    assert model._get_ls_params(model="scripted-2")["ls_model_name"] == "scripted-2"
    bound = GuardrailChatModel(llm=ScriptedChatModel().bind(model="scripted-3"), guard=keyword_guard())
    assert bound._get_ls_params()["ls_model_name"] == "scripted-3"
    with get_usage_metadata_callback() as usage:
        answer = model.invoke("Tell me a story.")
        streamed = merged(list(model.stream("Tell me a story.", model="scripted-2")))
    assert answer.response_metadata["model_name"] == "scripted-1"
    assert streamed.response_metadata["model_name"] == "scripted-2"
    assert streamed.response_metadata["guardrail"]["intercepted"] is False
    assert set(usage.usage_metadata) == {"scripted-1", "scripted-2"}
    assert usage.usage_metadata["scripted-2"] == streamed.usage_metadata


def test_a_refused_answer_still_counts_its_usage() -> None:
    inner = ScriptedChatModel(chunks=["Then the bomb goes off."])
    model = GuardrailChatModel(llm=inner, guard=keyword_guard(), check_input=False)
    with get_usage_metadata_callback() as usage:
        answer = model.invoke("Tell me a story.")
    assert answer.text == model.replacement
    assert answer.response_metadata["model_name"] == "scripted-1"
    assert usage.usage_metadata["scripted-1"]["output_tokens"] == 1
