"""Turn user input into token ids the same way at train time and at serve time."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from guardrail.model.normalize import normalize
from guardrail.types import ChatMessage

if TYPE_CHECKING:
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

PromptInput = str | Sequence[ChatMessage | dict[str, Any]]


class InputError(ValueError):
    """Input the guard cannot work on; the message names the problem (the server answers 4xx)."""


class LimitError(InputError):
    """Input over a size or token limit; the message names the limit (the server answers 413)."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def ensure_encodable(text: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate cannot be encoded as UTF-8).

    Streams use it: what they release must be the caller's text, so it cannot be cleaned.
    One-shot text (`clean_text`) drops lone surrogates instead, as it drops control characters.
    """
    found = _SURROGATE.search(text)
    if found is not None:
        code, offset = ord(found.group()), found.start()
        raise InputError(f"text holds a lone surrogate (U+{code:04X}) at offset {offset}; "
                         "send valid UTF-8 (join surrogate pairs split across chunks)")


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
    """Decode bytes leniently and normalise what the classifier reads (`guardrail.model.normalize`:
    invisible and control characters, lone surrogates, exotic spaces, stacked marks)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise InputError(f"text must be a string, not {type(text).__name__}")
    cleaned = normalize(text)
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
    """Encode response text, normalised, with no special tokens (it continues an assistant turn)."""
    text = normalize(text)
    if not text:
        return []
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def fit_prompt(ids: list[int], budget: int) -> list[int]:
    """Keep the start and the end of an over-long prompt: requests often sit at either end."""
    if len(ids) <= budget:
        return ids
    head = budget // 4
    return ids[:head] + ids[len(ids) - (budget - head) :]
