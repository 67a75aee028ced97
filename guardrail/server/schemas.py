"""Server-only request and response bodies; verdicts and events come from guardrail.types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from guardrail.types import ChatMessage, GuardConfig, InterceptEvent, Verdict, union_names

PromptBody = str | list[ChatMessage]
MIN_TEMPERATURE = 1e-3
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LONE_SURROGATE = "lone_surrogate"


def lone_surrogate(value: object, path: str = "") -> tuple[str, int, str] | None:
    """The first string under `value` holding a lone surrogate: (field path, index, code point).

    JSON can carry `"\\ud800"` alone; Python keeps it, but it is no Unicode text: a tokenizer
    cannot encode it and it must not reach one.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return path or "body", exc.start, f"U+{ord(value[exc.start]):04X}"
        return None
    items: list[tuple[str, object]]
    if isinstance(value, BaseModel):
        items = [(k, getattr(value, k)) for k in type(value).model_fields]
        items += list((value.model_extra or {}).items())
    elif isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return None
    for key, item in items:
        found = lone_surrogate(item, f"{path}.{key}" if path else key)
        if found is not None:
            return found
    return None


class ValidUnicode(BaseModel):
    """A request body whose every string field is valid Unicode (422 naming the field otherwise).

    Reusable: any request model that inherits it gets the check over all its fields, nested
    messages and content parts included.
    """

    @model_validator(mode="after")
    def _no_lone_surrogates(self) -> Any:
        found = lone_surrogate(self)
        if found is not None:
            field, index, code = found
            raise PydanticCustomError(  # the error handler puts the field's path in front
                LONE_SURROGATE, "lone surrogate {code} at index {index}; text must be valid Unicode",
                {"field": field, "index": index, "code": code})
        return self


def _greedy_below_floor(value: float | None) -> float | None:
    """A temperature this close to 0 is greedy decoding; dividing logits by it would overflow."""
    if value is not None and 0 < value < MIN_TEMPERATURE:
        return 0.0
    return value


MIN_TOP_P = 1e-6


def _top_p_floor(value: float | None) -> float | None:
    """A top_p this small keeps only the top token; below float32's range it would keep none."""
    if value is not None and value < MIN_TOP_P:
        return MIN_TOP_P
    return value


class _PromptRequest(ValidUnicode):
    """A request given as `prompt` (a string or chat messages) or as `messages`."""

    model_config = ConfigDict(extra="forbid")
    prompt: PromptBody | None = Field(None, description="The user request, or chat messages.")
    messages: list[ChatMessage] | None = Field(None, description="Chat messages (alternative to prompt).")

    @model_validator(mode="after")
    def _one_prompt(self) -> Any:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self

    @property
    def conversation(self) -> PromptBody:
        return self.prompt if self.prompt is not None else (self.messages or [])


class CheckItem(_PromptRequest):
    """One check of a batch: a prompt (or messages), and optionally a response."""

    response: str | None = Field(None, description="A response to check together with the prompt.")


class CheckRequest(CheckItem):
    """One check (`prompt` or `messages`, optional `response`), or a `batch` of them."""

    config: GuardConfig | None = None
    batch: list[CheckItem] | None = Field(None, min_length=1, description="Several checks, answered in "
                                          "order as `{\"results\": [Verdict, ...]}`; all use `config`.")

    @model_validator(mode="after")
    def _one_prompt(self) -> Any:
        given = [name for name in ("prompt", "messages", "batch") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'prompt', 'messages' or 'batch'")
        if self.batch is not None and self.response is not None:
            raise ValueError("with 'batch', give each item's 'response' inside the item")
        return self


class CheckResults(BaseModel):
    """The verdicts of a batched check, in the order of the batch."""

    results: list[Verdict]


class GenerateRequest(_PromptRequest):
    max_new_tokens: int = Field(128, ge=1, le=INT64_MAX)
    prefill: str | None = None
    guard: bool = True
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    config: GuardConfig | None = None

    _temperature = field_validator("temperature")(_greedy_below_floor)
    _top_p = field_validator("top_p")(_top_p_floor)


class SessionCreateRequest(_PromptRequest):
    config: GuardConfig | None = None


class SessionCreated(BaseModel):
    id: str
    prompt: Verdict
    config: GuardConfig
    ttl_s: float


class ChunkRequest(ValidUnicode):
    model_config = ConfigDict(extra="forbid")
    text: str


class SessionDeleted(BaseModel):
    id: str
    deleted: bool = True


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- OpenAI-compatible chat completions ---------------------------------------------------------
class ChatContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatRequestMessage(BaseModel):
    """A message as OpenAI clients send it: roles and content shapes beyond our ChatMessage."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ChatContentPart] | None = None

    def to_chat_message(self) -> ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(
            p.text or "" for p in (self.content or []) if p.type in ("text", "input_text"))
        role = {"developer": "system", "tool": "user"}.get(self.role, self.role)
        return ChatMessage(role=role, content=text)  # type: ignore[arg-type]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Accepted in local mode and ignored: they change nothing about the answer.
LOCAL_IGNORED = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls",
                           "prompt_cache_key", "safety_identifier"})
#: Accepted in local mode only at the value that means "off" (what we do anyway).
LOCAL_DEFAULT_ONLY: dict[str, tuple[object, ...]] = {
    "frequency_penalty": (0, 0.0, None),
    "presence_penalty": (0, 0.0, None),
    "logprobs": (False, None),
    "top_logprobs": (0, None),
    "logit_bias": ({}, None),
    "tools": ([], None),
    "tool_choice": ("none", None),
    "functions": ([], None),
    "function_call": ("none", None),
    "response_format": ({"type": "text"}, None),
    "modalities": (["text"], None),
}


class ChatCompletionRequest(ValidUnicode):
    """The fields this server reads; anything else is passed through to an upstream.

    In local mode a field outside the ones read here is refused (`unsupported_locally`), so a
    client never believes a parameter took effect when it did not.
    """

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatRequestMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = Field(None, description="Up to 4 sequences that end the answer.")
    n: int | None = Field(None, ge=1, le=1, description="Only one choice is supported.")
    guardrail: GuardConfig | None = Field(None, description="Per-request guard settings (extension).")

    _temperature = field_validator("temperature")(_greedy_below_floor)
    _top_p = field_validator("top_p")(_top_p_floor)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def chat_messages(self) -> list[ChatMessage]:
        return [m.to_chat_message() for m in self.messages]

    @property
    def stop_sequences(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        """Usage in a stream only when asked for, as the OpenAI contract has it."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def unsupported_locally(self) -> str | None:
        """The first parameter the local model cannot honour, or None."""
        for name, value in (self.model_extra or {}).items():
            if name in LOCAL_IGNORED:
                continue
            if name in LOCAL_DEFAULT_ONLY and value in LOCAL_DEFAULT_ONLY[name]:
                continue
            return name
        return None


class FiredCategories(BaseModel):
    """Categories that fired over a stream's checks (a union, in order of first firing)."""

    flagged: list[str] = Field(default_factory=list)
    blocked: list[str] = Field(default_factory=list)

    def add(self, flagged: Sequence[str], blocked: Sequence[str] = ()) -> None:
        """Count one check (a `ScoreEvent`'s or a `ChunkVerdict`'s categories)."""
        self.flagged = union_names(self.flagged, flagged, blocked)
        self.blocked = union_names(self.blocked, blocked)


class GuardrailInfo(BaseModel):
    """The `guardrail` field of a chat completion (and of its last stream chunk).

    Categories: the prompt's are in `prompt`; `response_flagged_categories` is the union over
    the answer's checks (with the ones that fired at the cut, when the guard cut it) and
    `flagged_categories` everything that fired anywhere (prompt, answer, tool calls).
    Build it with `GuardrailInfo.of(...)`, the one builder the local and proxy modes share.
    """

    intercepted: bool
    intercept: InterceptEvent | None = None
    prompt: Verdict | None = None
    checks: int = 0
    mode: Literal["local", "proxy"] = "local"
    tool_calls: list[Verdict] | None = Field(
        None, description="Proxy: one verdict per upstream tool call, checked before it is released.")
    response_flagged_categories: list[str] = Field(
        default_factory=list,
        description="Categories that fired at any check of the answer (at the cut included).")
    response_blocked_categories: list[str] = Field(
        default_factory=list, description="Those of them whose action is block.")
    flagged_categories: list[str] = Field(
        default_factory=list,
        description="Every category that fired: prompt, answer and tool calls together.")

    @model_validator(mode="after")
    def _derive_categories(self) -> GuardrailInfo:
        """The unions follow from the parts, however the field was built: the answer's gets
        the categories at a response cut and the tool calls'; the whole one gets everything."""
        calls = self.tool_calls or []
        cut = self.intercept.flagged_categories if self.intercept is not None else []
        at_response_cut = cut if self.intercept is not None and self.intercept.stage == "response" else []
        prompt = self.prompt.flagged_categories if self.prompt is not None else []
        self.response_flagged_categories = union_names(self.response_flagged_categories, at_response_cut,
                                                       *(v.flagged_categories for v in calls))
        self.response_blocked_categories = union_names(self.response_blocked_categories,
                                                       *(v.blocked_categories for v in calls))
        self.flagged_categories = union_names(prompt, self.response_flagged_categories, cut,
                                              self.flagged_categories)
        return self

    @classmethod
    def of(cls, *, mode: Literal["local", "proxy"], prompt: Verdict | None, checks: int,
           intercept: InterceptEvent | None = None, response: FiredCategories | None = None,
           tool_calls: list[Verdict] | None = None) -> GuardrailInfo:
        """The field from what a stream saw: its prompt verdict, the categories that fired at
        the answer's checks, the cut (if any) and the tool calls' verdicts."""
        response = response or FiredCategories()
        return cls(intercepted=intercept is not None, intercept=intercept, prompt=prompt, checks=checks,
                   mode=mode, tool_calls=tool_calls, response_flagged_categories=response.flagged,
                   response_blocked_categories=response.blocked)
