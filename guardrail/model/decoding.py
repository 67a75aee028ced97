"""Strategic decoding: generate with the KV cache and re-check safety at chosen steps.

Each checked step rides its [CLS] query in the same forward pass as the next token. Text
is released through the hold-back buffer. On `tau` consecutive unsafe checks the guard
either stops, or drops the withheld tokens, inserts a refusal and lets the model justify it.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import torch

from guardrail.model.engine import SafetyModel
from guardrail.model.holdback import HoldBackBuffer
from guardrail.model.masks import ClsQuery
from guardrail.model.policy import CheckSchedule, TauPolicy
from guardrail.model.prompts import PromptInput, encode_prompt, encode_text, fit_prompt
from guardrail.model.tokenstream import IncrementalDetokenizer
from guardrail.types import (
    DoneEvent,
    GenerationEvent,
    GuardConfig,
    InterceptEvent,
    ScoreEvent,
    Timings,
    TokenEvent,
    Usage,
)

REFUSAL = "I'm sorry, but I can't help with that."
JUSTIFY_TOKENS = 48


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Greedy at temperature 0, else temperature and nucleus sampling."""
    if params.temperature < 1e-3:  # below this, softmax under/overflows: it is greedy anyway
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, -1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < max(params.top_p, 1e-6)
        keep[0] = True  # the most likely token always survives
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class _Stream:
    """State of one generation: cache, response ids, buffer, policy, released text."""

    def __init__(self, model: SafetyModel, prompt_ids: list[int], config: GuardConfig) -> None:
        self.model = model
        self.config = config
        self.cache = model.new_cache()
        self.prompt_len = len(prompt_ids)
        self.response: list[int] = []
        self.buffer = HoldBackBuffer(config.hold_back)
        self.policy = TauPolicy.from_config(config)
        self.detok = IncrementalDetokenizer(model.tokenizer)
        self.text = ""
        self.checks = 0

    def query(self) -> ClsQuery:
        return ClsQuery(
            seen=self.prompt_len + len(self.response),
            prompt_len=self.prompt_len,
            window=self.config.window,
        )

    def release(self, n: int, *, final: bool = False) -> TokenEvent | None:
        start = self.buffer.released - n
        piece = self.detok.add(self.response[start : start + n], final=final) if n or final else ""
        if not piece:
            return None
        self.text += piece
        return TokenEvent(index=start, text=piece)


def generate_events(
    model: SafetyModel,
    prompt: PromptInput,
    config: GuardConfig,
    params: SamplingParams,
    *,
    prefill: str | None = None,
    guard: bool = True,
) -> Iterator[GenerationEvent]:
    """Yield token, score, intercept and done events for one guarded generation."""
    started = time.perf_counter()
    first_token_ms: float | None = None
    tok = model.tokenizer
    budget = model.max_context - params.max_new_tokens - JUSTIFY_TOKENS - 64
    prompt_ids = fit_prompt(encode_prompt(tok, prompt), max(budget, 32))
    stream = _Stream(model, prompt_ids, config if guard else config.model_copy(update={"hold_back": 0}))
    schedule = CheckSchedule(config.strategy, config.period)
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    eos = {int(i) for i in _eos_ids(model)}
    intercepted: InterceptEvent | None = None

    def check_now() -> ClsQuery | None:
        return stream.query() if guard else None

    # Prompt pass (with the prompt check riding along), then the prefill as forced response tokens.
    prefill_ids = encode_text(tok, prefill) if prefill else []
    out = model.step(
        stream.cache,
        prompt_ids,
        check=check_now() if config.check_prompt else None,
        want_logits=not prefill_ids,
    )
    if out.score is not None:
        stream.checks += 1
        flagged = out.score >= config.threshold
        yield ScoreEvent(index=0, score=out.score, unsafe=flagged, streak=int(flagged))
        if flagged:
            intercepted = InterceptEvent(index=0, score=out.score, action=config.action, stage="prompt")
    if intercepted is None and prefill_ids:
        stream.response.extend(prefill_ids)
        stream.buffer.append(len(prefill_ids))
        out = model.step(stream.cache, prefill_ids, check=check_now())
        if out.score is not None:
            intercepted = yield from _record_check(stream, out.score)

    logits = out.logits
    generated = 0
    while intercepted is None and generated < params.max_new_tokens and logits is not None:
        token = sample_next(logits, params, generator)
        if token in eos:
            break
        generated += 1
        stream.response.append(token)
        stream.buffer.append(1)
        do_check = guard and schedule.should_check(len(stream.response))
        out = model.step(stream.cache, [token], check=stream.query() if do_check else None)
        logits = out.logits
        if out.score is not None:
            intercepted = yield from _record_check(stream, out.score)
        elif not guard:
            event = stream.release(_release_unguarded(stream))
            if event:
                first_token_ms = first_token_ms or (time.perf_counter() - started) * 1000
                yield event
        if first_token_ms is None and stream.buffer.released:
            first_token_ms = (time.perf_counter() - started) * 1000

    if intercepted is None:
        # Cover the tail that no scheduled check reached before releasing it.
        safe = True
        if guard and stream.buffer.cleared < len(stream.response):
            out = model.step(stream.cache, [], check=stream.query(), want_logits=False)
            assert out.score is not None
            intercepted = yield from _record_check(stream, out.score, final=True)
            safe = intercepted is None and out.score < config.threshold
        if intercepted is None:
            n = stream.buffer.finish(safe or not guard)
            event = stream.release(n, final=True)
            if event:
                yield event

    if intercepted is not None:
        yield intercepted
        if config.action == "refuse":
            yield from _refuse(stream, params, generator, eos, guard)

    yield DoneEvent(
        text=stream.text,
        intercepted=intercepted is not None,
        intercept_index=intercepted.index if intercepted is not None else None,
        usage=Usage(
            prompt_tokens=len(prompt_ids), completion_tokens=len(stream.response), checks=stream.checks
        ),
        timings=Timings(total_ms=(time.perf_counter() - started) * 1000, first_token_ms=first_token_ms),
    )


def _release_unguarded(stream: _Stream) -> int:
    stream.buffer.cleared = stream.buffer.total
    return stream.buffer.on_check(stream.buffer.total, unsafe=False)


def _record_check(
    stream: _Stream, score: float, *, final: bool = False
) -> Generator[GenerationEvent, None, InterceptEvent | None]:
    """Apply one check to policy and buffer; yield its events; return an intercept or None."""
    stream.checks += 1
    act = stream.policy.update(score)
    unsafe = stream.policy.is_unsafe(score)
    yield ScoreEvent(index=len(stream.response), score=score, unsafe=unsafe, streak=stream.policy.streak)
    if act or (final and unsafe):
        stream.buffer.intercept()
        return InterceptEvent(index=stream.buffer.released, score=score, action=stream.config.action)
    event = stream.release(stream.buffer.on_check(len(stream.response), unsafe))
    if event:
        yield event
    return None


def _refuse(
    stream: _Stream,
    params: SamplingParams,
    generator: torch.Generator | None,
    eos: set[int],
    guard: bool,
) -> Iterator[GenerationEvent]:
    """Drop withheld tokens from the cache, insert the refusal, let the model justify it.

    The justification is generated under the guard as well; if it turns unsafe it is
    simply cut, since the refusal has already been delivered.
    """
    model = stream.model
    withheld = len(stream.response) - stream.buffer.released
    if withheld:
        stream.cache.crop(-withheld)
        del stream.response[stream.buffer.released :]
    prefix = (" " if stream.text and not stream.text.endswith((" ", "\n")) else "") + REFUSAL
    refusal_ids = encode_text(model.tokenizer, prefix)
    stream.text += prefix
    yield TokenEvent(index=len(stream.response), text=prefix)
    out = model.step(stream.cache, refusal_ids)
    logits = out.logits
    detok = IncrementalDetokenizer(model.tokenizer)
    justification: list[int] = []
    for _ in range(JUSTIFY_TOKENS):
        assert logits is not None
        token = sample_next(logits, params, generator)
        if token in eos:
            break
        justification.append(token)
        out = model.step(stream.cache, [token])
        logits = out.logits
    # One check over the whole justification: release it only if it is safe.
    if justification:
        seen = stream.prompt_len + len(stream.response) + len(refusal_ids) + len(justification)
        check = ClsQuery(seen=seen, prompt_len=stream.prompt_len, window=stream.config.window)
        verdict = model.step(stream.cache, [], check=check, want_logits=False) if guard else None
        if verdict is None or verdict.score is None or verdict.score < stream.config.threshold:
            piece = detok.add(justification, final=True)
            stream.text += piece
            yield TokenEvent(index=len(stream.response) + len(refusal_ids), text=piece)


def _eos_ids(model: SafetyModel) -> list[int]:
    tok = model.tokenizer
    ids = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen_eos = getattr(getattr(model.lm, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)
