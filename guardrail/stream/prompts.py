"""Requests the guard can read, from strings, chat messages or SDK message objects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guardrail.types import ChatMessage, PromptInput

PromptLike = PromptInput
"""Kept for imports of the old name; `PromptInput` is the one prompt alias."""

NO_PROMPT: list[dict[str, Any]] = [{"role": "user", "content": ""}]
"""Stands in for a request when only a response is known (an empty user turn)."""

_ROLE_ALIASES = {"human": "user", "ai": "assistant", "developer": "system", "tool": "user",
                 "function": "user"}


def get_field(obj: Any, key: str) -> Any:
    """`obj[key]` for a dict, else `obj.key`; None when absent."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def content_text(content: Any) -> str:
    """Plain text of a message content: a string, or the text parts of a multimodal list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [p if isinstance(p, str) else get_field(p, "text") for p in content]
        return "".join(p for p in parts if isinstance(p, str))
    return "" if content is None else str(content)


def as_prompt(value: Any) -> PromptInput | None:
    """A request the guard can read, from a string or chat messages; None if `value` is neither.

    Messages may be `ChatMessage`s, OpenAI-style dicts (tool and developer roles are mapped
    onto user and system) or objects with `role`/`content` attributes.
    """
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, ChatMessage):
        return [value]
    if isinstance(value, Sequence) and value and not isinstance(value, bytes):
        messages: list[dict[str, Any]] = []
        for item in value:
            role, content = get_field(item, "role"), get_field(item, "content")
            if not isinstance(role, str) or (content is None and role != "assistant"):
                return None
            role = _ROLE_ALIASES.get(role, role)
            if role not in ("system", "user", "assistant"):
                return None
            messages.append({"role": role, "content": content_text(content)})
        return messages
    return None


__all__ = ["NO_PROMPT", "PromptLike", "as_prompt", "content_text", "get_field"]
