"""Turn user input into token ids the same way at train time and at serve time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from guardrail.types import ChatMessage

if TYPE_CHECKING:
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

PromptInput = str | Sequence[ChatMessage | dict[str, Any]]


class InputError(ValueError):
    """Input the guard cannot work on; the message names the problem."""


def to_messages(prompt: PromptInput) -> list[dict[str, str]]:
    """Accept a plain string (one user turn) or chat messages; validate roles and content."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": clean_text(prompt)}]
    if not prompt:
        raise InputError("messages must not be empty")
    messages = []
    for i, message in enumerate(prompt):
        msg = message if isinstance(message, ChatMessage) else _parse_message(message, i)
        messages.append({"role": msg.role, "content": clean_text(msg.content, allow_empty=True)})
    return messages


def _parse_message(message: Any, index: int) -> ChatMessage:
    try:
        return ChatMessage.model_validate(message)
    except Exception as exc:  # pydantic's error already names the field
        raise InputError(f"message {index} is not a chat message: {exc}") from exc


def clean_text(text: str | bytes, *, allow_empty: bool = False) -> str:
    """Decode bytes leniently and drop control characters other than newlines and tabs."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise InputError(f"text must be a string, not {type(text).__name__}")
    cleaned = "".join(ch for ch in text if ch in "\n\t\r" or ch.isprintable())
    if not allow_empty and not cleaned.strip():
        raise InputError("text is empty")
    return cleaned


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: PromptInput) -> list[int]:
    """Chat-format the conversation up to and including the assistant header."""
    messages = to_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]  # type: ignore[index, call-overload]
        return [int(i) for i in ids]  # type: ignore[union-attr, arg-type]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Encode response text with no special tokens (it continues an assistant turn)."""
    if not text:
        return []
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def fit_prompt(ids: list[int], budget: int) -> list[int]:
    """Keep the start and the end of an over-long prompt: requests often sit at either end."""
    if len(ids) <= budget:
        return ids
    head = budget // 4
    return ids[:head] + ids[len(ids) - (budget - head) :]
