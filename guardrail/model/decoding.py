"""Strategic decoding: generate with the KV cache and re-check safety at chosen steps.

Each checked step rides its [CLS] query in the same forward pass as the next token. Text
is released through the hold-back buffer. On `tau` consecutive unsafe checks the guard
either stops, or drops the withheld tokens, inserts a refusal and lets the model justify it.

The loop is written once, as a plan (`generation_plan`, in the vocabulary of
`guardrail.model.plans`) that yields the work it needs done (`Forward`, `Tokenize`,
`Detokenize`, `Encode`, `DropTokens`) and the events it produces. `generate_events` runs it
in place (the embedded guard); the sidecar runs the same plan with the batched driver
(`guardrail.server.driver`): forward passes in its batcher, tokenizer work on its tokenizer
thread.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from guardrail.model.check import CheckJudgement, check_categories, judge_check, record_check
from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.holdback import HoldBackBuffer
from guardrail.model.masks import ClsQuery
from guardrail.model.plans import CacheWork, Forward, Tokenize, TokenizerWork, events_in_place
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
    union_names,
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


# -- the generation's own kinds of work (the vocabulary is `guardrail.model.plans`) ---------------
@dataclass
class Detokenize(TokenizerWork):
    """Turn released token ids into text (tokenizer work); answered with the text."""

    detokenizer: IncrementalDetokenizer
    ids: list[int]
    final: bool

    def run(self) -> str:
        return self.detokenizer.add(self.ids, final=self.final)


@dataclass
class Encode(TokenizerWork):
    """Tokenize text to be appended to the response (tokenizer work); answered with the ids."""

    tokenizer: Any
    text: str

    def run(self) -> list[int]:
        return encode_text(self.tokenizer, self.text)


@dataclass
class DropTokens(CacheWork):
    """Remove the last `count` tokens from a cache (model work: withheld tokens before a refusal)."""

    cache: Any
    count: int

    def run(self) -> None:
        self.cache.crop(-self.count)


Work = Forward | Tokenize | TokenizerWork | CacheWork
class Sampled(NamedTuple):
    """The sampled next token (None when not sampling) and the pass's checks, in order."""

    token: int | None
    scores: list[float]
    categories: list[dict[str, float]]
    """Category probabilities of each check, aligned with `scores`."""


#: Yields work and events; receives the answer to each piece of work (None after an event).
GenerationPlan = Generator[Work | GenerationEvent, Any, None]


class Sampler:
    """Picks the next token from a pass's logits, with the generation's own random state."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator: torch.Generator | None = None

    def pick(self, out: StepOutput, sample: bool) -> Sampled:
        categories = out.category_scores
        if not sample or out.logits is None:
            return Sampled(None, out.scores, categories)
        if self.generator is None and self.params.seed is not None:  # on the logits' device (CUDA too)
            self.generator = torch.Generator(device=out.logits.device).manual_seed(self.params.seed)
        return Sampled(sample_next(out.logits, self.params, self.generator), out.scores, categories)


@dataclass
class GenerationInputs:
    prompt_ids: list[int]
    prefill_ids: list[int]


def encode_inputs(model: SafetyModel, prompt: PromptInput, prefill: str | None,
                  params: SamplingParams) -> GenerationInputs:
    """Tokenize the prompt (cut to leave room for the answer and a refusal) and the prefill."""
    budget = max(model.max_context - params.max_new_tokens - JUSTIFY_TOKENS - 64, 32)
    prompt_ids = fit_prompt(encode_prompt(model.tokenizer, prompt), budget)
    return GenerationInputs(prompt_ids, encode_text(model.tokenizer, prefill) if prefill else [])


class _Stream:
    """State of one generation: cache, response ids, buffer, policy, released text."""

    def __init__(self, model: SafetyModel, prompt_ids: list[int], config: GuardConfig,
                 sampler: Sampler) -> None:
        self.model = model
        self.sampler = sampler
        self.config = config
        self.cache = model.new_cache()
        self.prompt_len = len(prompt_ids)
        self.response: list[int] = []
        self.buffer = HoldBackBuffer(config.hold_back)
        self.policy = TauPolicy.from_config(config)
        self.detok = IncrementalDetokenizer(model.tokenizer)
        self.text = ""
        self.checks = 0
        self.flagged: list[str] = []  # categories fired at any check, in order of first firing
        self.last_unsafe = False

    def judge(self, score: float, categories: dict[str, float]) -> CheckJudgement:
        """One check under the config (binary gate, then category rules); remembers what fired."""
        judged = judge_check(score, self.config, categories, self.model.head.category_thresholds)
        self.flagged = union_names(self.flagged, judged.flagged)
        self.last_unsafe = judged.unsafe
        return judged

    def query(self, length: int | None = None) -> ClsQuery:
        """A check over the prompt and the first `length` response tokens (default: all)."""
        length = len(self.response) if length is None else length
        return ClsQuery(seen=self.prompt_len + length, prompt_len=self.prompt_len, window=self.config.window)

    def forward(self, ids: list[int], checks: list[ClsQuery], *, sample: bool = True) -> Forward:
        """A pass answered with (next token if `sample`, else None; the checks' scores)."""
        request = StepRequest(self.cache, ids, want_logits=sample, checks=checks)
        return Forward(request, post=functools.partial(self.sampler.pick, sample=sample))

    def release(self, n: int, *, final: bool = False) -> Generator[Work, Any, TokenEvent | None]:
        start = self.buffer.released - n
        piece = (yield Detokenize(self.detok, self.response[start : start + n], final)) if n or final else ""
        if not piece:
            return None
        self.text += piece
        return TokenEvent(index=start, text=piece)


def generation_plan(model: SafetyModel, prompt: PromptInput, config: GuardConfig,
                    params: SamplingParams, *, prefill: str | None = None, guard: bool = True,
                    started: float | None = None) -> GenerationPlan:
    """One guarded generation as a plan: token, score, intercept and done events, in order.

    `started` (a `time.perf_counter()` reading) is when the request arrived, so the reported
    timings include tokenizing it.
    """
    started = time.perf_counter() if started is None else started
    check_categories(model, config)  # an unknown category name fails before any work
    first_token_ms: float | None = None
    encode = functools.partial(encode_inputs, model, prompt, prefill, params)
    inputs: GenerationInputs = yield Tokenize(encode)
    prompt_ids, prefill_ids = inputs.prompt_ids, inputs.prefill_ids
    stream = _Stream(model, prompt_ids, config if guard else config.model_copy(update={"hold_back": 0}),
                     Sampler(params))
    schedule = CheckSchedule(config.strategy, config.period)
    eos = set(eos_ids(model))
    intercepted: InterceptEvent | None = None

    # Prompt pass (with the prompt check riding along), then the prefill as forced response tokens.
    prompt_check = [stream.query()] if guard and config.check_prompt else []
    token, scores, categories = yield stream.forward(prompt_ids, prompt_check, sample=not prefill_ids)
    if scores:
        score = scores[-1]
        stream.checks += 1
        judged = stream.judge(score, categories[-1])
        yield ScoreEvent(index=0, score=score, unsafe=judged.unsafe, streak=int(judged.unsafe),
                         categories=categories[-1], flagged_categories=judged.flagged,
                         blocked_categories=judged.blocked)
        if judged.unsafe:
            intercepted = InterceptEvent(index=0, score=score, action=config.action, stage="prompt",
                                         flagged_categories=judged.flagged)
    if intercepted is None and prefill_ids:
        # The forced tokens get the schedule's checks at their positions, and one at their end.
        stream.response.extend(prefill_ids)
        stream.buffer.append(len(prefill_ids))
        due = schedule.positions(0, len(prefill_ids)) if guard else []
        if guard and (not due or due[-1] != len(prefill_ids)):
            due.append(len(prefill_ids))
        token, scores, categories = yield stream.forward(prefill_ids, [stream.query(n) for n in due])
        for position, score, at in zip(due, scores, categories, strict=True):
            intercepted = yield from _record_check(stream, score, at, position=position)
            if intercepted is not None:
                break

    generated = 0
    while intercepted is None and generated < params.max_new_tokens and token is not None:
        if token in eos:
            break
        generated += 1
        stream.response.append(token)
        stream.buffer.append(1)
        do_check = guard and schedule.should_check(len(stream.response))
        token, scores, categories = yield stream.forward([token], [stream.query()] if do_check else [],
                                                         sample=generated < params.max_new_tokens)
        if scores:
            intercepted = yield from _record_check(stream, scores[-1], categories[-1])
        elif not guard:
            stream.buffer.cleared = stream.buffer.total
            event = yield from stream.release(stream.buffer.on_check(stream.buffer.total, unsafe=False))
            if event:
                first_token_ms = first_token_ms or (time.perf_counter() - started) * 1000
                yield event
        if first_token_ms is None and stream.buffer.released:
            first_token_ms = (time.perf_counter() - started) * 1000

    if intercepted is None:
        # Cover the tail that no scheduled check reached before releasing it.
        safe = True
        if guard and stream.buffer.cleared < len(stream.response):
            _, scores, categories = yield stream.forward([], [stream.query()], sample=False)
            intercepted = yield from _record_check(stream, scores[-1], categories[-1], final=True)
            safe = intercepted is None and not stream.last_unsafe
        if intercepted is None:
            event = yield from stream.release(stream.buffer.finish(safe or not guard), final=True)
            if event:
                yield event

    if intercepted is not None:
        yield intercepted
        if config.action == "refuse":
            yield from _refuse(stream, eos, guard)

    yield DoneEvent(
        text=stream.text,
        intercepted=intercepted is not None,
        intercept_index=intercepted.index if intercepted is not None else None,
        usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(stream.response),
                    checks=stream.checks),
        timings=Timings(total_ms=(time.perf_counter() - started) * 1000, first_token_ms=first_token_ms),
        flagged_categories=stream.flagged,
    )


def _record_check(stream: _Stream, score: float, categories: dict[str, float] | None = None, *,
                  final: bool = False, position: int | None = None
                  ) -> Generator[Work | GenerationEvent, Any, InterceptEvent | None]:
    """Apply one check over the first `position` response tokens (default: all) to policy and
    buffer; yield its events; return an intercept or None.

    The check is unsafe when its score reaches the threshold or a `block` category fired;
    either counts toward tau alike."""
    position = len(stream.response) if position is None else position
    stream.checks += 1
    categories = categories or {}
    judged = stream.judge(score, categories)
    act = record_check(stream.policy, score, judged)
    yield ScoreEvent(index=position, score=score, unsafe=judged.unsafe, streak=stream.policy.streak,
                     categories=categories, flagged_categories=judged.flagged,
                     blocked_categories=judged.blocked)
    if act or (final and judged.unsafe):
        stream.buffer.intercept()
        return InterceptEvent(index=stream.buffer.released, score=score, action=stream.config.action,
                              flagged_categories=judged.flagged)
    event = yield from stream.release(stream.buffer.on_check(position, judged.unsafe))
    if event:
        yield event
    return None


def _refuse(stream: _Stream, eos: set[int], guard: bool) -> Generator[Work | GenerationEvent, Any, None]:
    """Drop withheld tokens from the cache, insert the refusal, let the model justify it.

    The justification is checked once, as a whole, and released only if it is safe (the
    refusal itself has already been delivered). That check is not counted in `usage.checks`.
    """
    withheld = len(stream.response) - stream.buffer.released
    if withheld:
        yield DropTokens(stream.cache, withheld)
        del stream.response[stream.buffer.released :]
    prefix = (" " if stream.text and not stream.text.endswith((" ", "\n")) else "") + REFUSAL
    refusal_ids = yield Encode(stream.model.tokenizer, prefix)
    stream.text += prefix
    yield TokenEvent(index=len(stream.response), text=prefix)
    token = (yield stream.forward(refusal_ids, [])).token
    justification: list[int] = []
    for i in range(JUSTIFY_TOKENS):
        if token is None or token in eos:
            break
        justification.append(token)
        token = (yield stream.forward([token], [], sample=i + 1 < JUSTIFY_TOKENS)).token
    if justification:
        seen = stream.prompt_len + len(stream.response) + len(refusal_ids) + len(justification)
        check = ClsQuery(seen=seen, prompt_len=stream.prompt_len, window=stream.config.window)
        unsafe = False
        if guard:
            checked: Sampled = yield stream.forward([], [check], sample=False)
            unsafe = judge_check(checked.scores[-1], stream.config, checked.categories[-1],
                                 stream.model.head.category_thresholds).unsafe
        if not unsafe:
            piece = yield Detokenize(IncrementalDetokenizer(stream.model.tokenizer), justification, True)
            stream.text += piece
            yield TokenEvent(index=len(stream.response) + len(refusal_ids), text=piece)


def generate_events(
    model: SafetyModel,
    prompt: PromptInput,
    config: GuardConfig,
    params: SamplingParams,
    *,
    prefill: str | None = None,
    guard: bool = True,
) -> Iterator[GenerationEvent]:
    """Yield token, score, intercept and done events for one guarded generation (in place)."""
    plan = generation_plan(model, prompt, config, params, prefill=prefill, guard=guard)
    yield from events_in_place(model, plan)


def eos_ids(model: SafetyModel) -> list[int]:
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
