"""Test doubles: a provider-like chat model that streams a script, and a guard over the keyword model.

`ScriptedChatModel` behaves like a hosted chat model as far as LangChain can tell: it honours
`stop` and a per-call `model`, reports usage on the last chunk (input tokens once) and puts
`model_name` in `response_metadata`. Its stream is exactly the chunks it is given, so a test
chooses the chunking.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import torch
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from guardrail import Guard, GuardConfig
from guardrail.model.engine import SafetyModel, StepOutput
from guardrail.model.head import HeadConfig, SafetyHead
from guardrail.model.masks import ClsQuery
from guardrail.protocols import PromptInput, SessionProtocol
from guardrail.types import ChunkVerdict, GenerationEvent, GenerationResult, Verdict

SCRIPT = ("Sure, I can help with that. Here is a short story about a dog and a red ball in the park."
          " Then the bomb goes off with a loud bang and the secret recipe follows in detail.")
"""A safe opening, then the keyword (` bomb`) that the keyword model flags."""


def words(text: str) -> list[str]:
    """`text` split before each space: the fine chunking a token-level stream gives."""
    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


class ScriptedChatModel(BaseChatModel):
    """Streams `chunks` as they are; `invoke` answers their concatenation."""

    model_config = ConfigDict(populate_by_name=True)

    chunks: Sequence[str] = Field(default_factory=lambda: words("Hello there, how are you today?"))
    model_name: str = Field(default="scripted-1", alias="model")
    delay_s: float = 0.0
    """Pause before each streamed chunk in `astream` (a slow provider)."""
    streamed: list[str] = Field(default_factory=list, exclude=True)
    """Every chunk this model has produced so far (what a leak would expose)."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "scripted"
        params["ls_model_name"] = kwargs.get("model") or self.model_name
        return params

    def _pieces(self, stop: list[str] | None) -> list[str]:
        text = "".join(self.chunks)
        cut = min((i for s in stop or [] if s and (i := text.find(s)) >= 0), default=len(text))
        out, seen = [], 0
        for chunk in self.chunks:
            if seen >= cut:
                break
            out.append(chunk[: cut - seen])
            seen += len(chunk)
        return [p for p in out if p]

    def _usage(self, messages: list[BaseMessage], pieces: list[str]) -> UsageMetadata:
        prompt = sum(len(m.text.split()) + 1 for m in messages)
        return UsageMetadata(input_tokens=prompt, output_tokens=len(pieces),
                             total_tokens=prompt + len(pieces))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        pieces = self._pieces(stop)
        self.streamed.extend(pieces)
        message = AIMessage(content="".join(pieces), usage_metadata=self._usage(messages, pieces),
                            response_metadata={"model_name": kwargs.get("model") or self.model_name,
                                               "finish_reason": "stop"})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        pieces = self._pieces(stop)
        for piece in pieces:
            self.streamed.append(piece)
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=self._usage(messages, pieces), chunk_position="last",
            response_metadata={"model_name": kwargs.get("model") or self.model_name,
                               "finish_reason": "stop"}))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._stream(messages, stop=stop, **kwargs):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield chunk


KEYWORD = " bomb"


class KeywordModel(SafetyModel):
    """A tiny random LM whose [CLS] score is 0.99 when the checked span holds `KEYWORD`, else 0.01.

    The forward passes are real (caches, masks, [CLS] queries); only the head's number is
    replaced, so what reaches a consumer can be asserted exactly.
    """

    keyword_ids: list[int]

    def step(self, cache: Any, token_ids: list[int], **kwargs: Any) -> StepOutput:  # type: ignore[override]
        before = cache.get_seq_length()
        out = super().step(cache, token_ids, **kwargs)
        history = getattr(cache, "_keyword_history", [])[:before] + list(token_ids)
        cache._keyword_history = history
        checks: list[ClsQuery] = list(kwargs.get("checks") or [])
        if not checks and kwargs.get("check") is not None:
            checks = [kwargs["check"]]
        if checks:  # one score per [CLS] query of the pass, in order
            out.scores = [0.99 if self._hit(history[: q.seen]) else 0.01 for q in checks]
            out.score = out.scores[-1]
        return out

    def _hit(self, seen: list[int]) -> bool:
        n = len(self.keyword_ids)
        return any(seen[i : i + n] == self.keyword_ids for i in range(len(seen) - n + 1))


@functools.cache
def _tiny_parts() -> tuple[Any, Any, SafetyHead]:
    """A tiny random Llama, its tokenizer (the default model's) and a [CLS] head: built once."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from guardrail.model.loading import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)).eval()
    lm.requires_grad_(False)
    head = SafetyHead(HeadConfig(hidden_size=32, num_layers=2, adapter_rank=4, classifier_hidden=16))
    with torch.no_grad():
        head.init_cls_from(lm.get_input_embeddings().weight)
    return lm, tokenizer, head


@functools.cache
def keyword_model(keyword: str = KEYWORD) -> KeywordModel:
    """The keyword model for `keyword`; a few milliseconds per forward pass on a CPU."""
    lm, tokenizer, head = _tiny_parts()
    model = KeywordModel(lm, tokenizer, head, name="tiny-keyword")
    model.keyword_ids = [int(i) for i in tokenizer(keyword, add_special_tokens=False)["input_ids"]]
    return model


def keyword_guard(*, hold_back: int = 2, keyword: str = KEYWORD, **config: Any) -> Guard:
    """An embedded guard over the keyword model that acts on the first unsafe check."""
    settings = GuardConfig(threshold=0.5, tau=1, hold_back=hold_back, **config)
    return Guard(safety_model=keyword_model(keyword), config=settings)


_BOUNDARY = re.compile(r"\s+\S")


def released_before_cut(chunks: Sequence[str], hold_back: int, *, period: int = 4,
                        closing: bool = True) -> str | None:
    """What a consumer may have seen when `chunks` are moderated: None if the keyword is never
    read, else the text up to the last safe check minus `hold_back` tokens.

    Written from the contract, not the code: a session reads text up to its last
    whitespace-to-word boundary (everything at close), checks at every `period`-th response
    token whatever the chunking (and once more over everything at close), and releases checked
    tokens but the last `hold_back`; the keyword model flags any check whose tokens hold the
    keyword. With `closing=False`, only what the chunks' feeds decide (not the close).
    """
    model = keyword_model()
    fed = ""
    steps = [(i, False) for i in range(len(chunks))] + ([(len(chunks) - 1, True)] if closing else [])
    for i, at_close in steps:
        if not at_close:
            fed += chunks[i]
        cut = len(fed) if at_close else max((m.start() for m in _BOUNDARY.finditer(fed)), default=0)
        read = fed[:cut]
        enc = model.tokenizer(read, add_special_tokens=False, return_offsets_mapping=True)
        ids, ends = list(enc["input_ids"]), [int(end) for _, end in enc["offset_mapping"]]
        positions = list(range(period, len(ids) + 1, period)) + ([len(ids)] if at_close and ids else [])
        last_safe = 0
        for p in positions:
            if model._hit(ids[:p]):
                keep = last_safe - hold_back
                return read[: ends[keep - 1]] if keep > 0 else ""
            last_safe = p
    return None


class RecordingSession:
    """A session that logs what its consumer did to it: `feed`, `close`, `delete` (the abort)."""

    def __init__(self, inner: SessionProtocol, log: list[str]) -> None:
        self.inner, self.log = inner, log
        self.prompt_verdict = inner.prompt_verdict

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        self.log.append("feed")
        return self.inner.feed(chunk)

    def close(self) -> ChunkVerdict:
        self.log.append("close")
        return self.inner.close()

    def delete(self) -> None:
        self.log.append("delete")


class RecordingGuard:
    """A `GuardProtocol` over another guard that keeps one log per session it opened."""

    def __init__(self, inner: Guard) -> None:
        self.inner = inner
        self.config = inner.config
        self.sessions: list[list[str]] = []

    def check_prompt(self, prompt: PromptInput) -> Verdict:
        return self.inner.check_prompt(prompt)

    def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        return self.inner.check_response(prompt, response)

    def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]:
        return self.inner.check_prompts(prompts)

    def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]:
        return self.inner.check_responses(pairs)

    def generate(self, prompt: PromptInput, **kwargs: Any) -> Iterator[GenerationEvent]:
        return self.inner.generate(prompt, **kwargs)

    def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        return self.inner.generate_text(prompt, **kwargs)

    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> RecordingSession:
        self.sessions.append([])
        return RecordingSession(self.inner.session(prompt, config=config), self.sessions[-1])

    def close(self) -> None:
        self.inner.close()


class AsyncRecordingSession:
    """The async twin of `RecordingSession`."""

    def __init__(self, inner: SessionProtocol, log: list[str]) -> None:
        self.inner, self.log = inner, log
        self.prompt_verdict = inner.prompt_verdict

    async def feed(self, chunk: str | bytes) -> ChunkVerdict:
        self.log.append("feed")
        return await asyncio.to_thread(self.inner.feed, chunk)

    async def close(self) -> ChunkVerdict:
        self.log.append("close")
        return await asyncio.to_thread(self.inner.close)

    async def delete(self) -> None:
        self.log.append("delete")


class AsyncRecordingGuard:
    """An `AsyncGuardProtocol` over a sync guard, like `AsyncGuardrailClient` over a sidecar."""

    def __init__(self, inner: Guard) -> None:
        self.inner = inner
        self.config = inner.config
        self.sessions: list[list[str]] = []

    async def check_prompt(self, prompt: PromptInput) -> Verdict:
        return await asyncio.to_thread(self.inner.check_prompt, prompt)

    async def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        return await asyncio.to_thread(self.inner.check_response, prompt, response)

    async def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]:
        return await asyncio.to_thread(self.inner.check_prompts, prompts)

    async def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]:
        return await asyncio.to_thread(self.inner.check_responses, pairs)

    async def generate(self, prompt: PromptInput, **kwargs: Any) -> AsyncIterator[GenerationEvent]:
        for event in await asyncio.to_thread(lambda: list(self.inner.generate(prompt, **kwargs))):
            yield event

    async def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        return await asyncio.to_thread(self.inner.generate_text, prompt, **kwargs)

    async def session(self, prompt: PromptInput, *,
                      config: GuardConfig | None = None) -> AsyncRecordingSession:
        self.sessions.append([])
        inner = await asyncio.to_thread(self.inner.session, prompt, config=config)
        return AsyncRecordingSession(inner, self.sessions[-1])

    async def close(self) -> None:
        self.inner.close()
