"""A deterministic stand-in head and an independent statement of the release contract.

`KeywordWindowModel` runs the real forward passes of a tiny random Llama (caches, masks,
batching) and replaces only the [CLS] number: a query scores 0.99 when the keyword's tokens
lie within the last `span` response tokens it reads, else 0.01. With `span=None` a keyword
anywhere in what the query reads flags it (a monotone head); with a small span, benign text after a
harmful span lowers the score again, which is what lets a check scheduled on chunk
boundaries miss it.

`expected_outcome` computes, without the product's tokenizer helpers, what a session must
show under the moderation contract: checks at the response positions the schedule names
(and a covering check at close), tau and the hold-back applied position by position, the
released text being the input up to (last safe check - hold_back) tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.head import SafetyHead
from guardrail.types import GuardConfig
from tests.keyword_model import tiny_parts

KEYWORD = " bomb"
FLAGGED, CLEAN = 0.99, 0.01


def _queries(request: Any) -> list[Any]:
    """The [CLS] queries of one request (one `check` today; a list where a pass carries several)."""
    many = getattr(request, "checks", None)
    if many is not None:
        return list(many)
    one = getattr(request, "check", None)
    return [one] if one is not None else []


def _contains(seq: list[int], sub: list[int]) -> bool:
    n = len(sub)
    return any(seq[i : i + n] == sub for i in range(len(seq) - n + 1))


class ScoringModel(SafetyModel):
    """Real passes; each [CLS] score is replaced by `_score(history, query)`."""

    def _score(self, history: list[int], query: Any) -> float:
        raise NotImplementedError

    def _history(self, cache: Any, past: int, token_ids: list[int]) -> list[int]:
        history = list(getattr(cache, "_oracle_history", []))[:past] + list(token_ids)
        cache._oracle_history = history
        return history

    def _rescore(self, request: Any, history: list[int], out: StepOutput) -> None:
        queries = _queries(request)
        if not queries:
            return
        scores = [self._score(history, q) for q in queries]
        if hasattr(out, "scores"):
            out.scores = scores
        out.score = scores[-1]

    def step(self, cache: Any, token_ids: list[int], **kw: Any) -> StepOutput:  # type: ignore[override]
        past = cache.get_seq_length()
        out = super().step(cache, token_ids, **kw)
        self._rescore(SimpleRequest(kw), self._history(cache, past, token_ids), out)
        return out

    def step_many(self, requests: list[StepRequest]) -> list[StepOutput]:
        if len(requests) <= 1:  # the engine answers a single request through `step`
            return [self.step(r.cache, r.token_ids, **_step_kwargs(r)) for r in requests]
        pasts = [r.cache.get_seq_length() for r in requests]
        outputs = super().step_many(requests)
        for r, past, out in zip(requests, pasts, outputs, strict=True):
            self._rescore(r, self._history(r.cache, past, r.token_ids), out)
        return outputs


class KeywordWindowModel(ScoringModel):
    """Each [CLS] score says whether the keyword is in the recent response."""

    keyword_ids: list[int]
    span: int | None = None

    def _score(self, history: list[int], query: Any) -> float:
        if self.span is None:  # everything the query reads, the request included (one-shot checks)
            seen = history[: query.seen]
        else:
            seen = history[max(query.prompt_len, query.seen - self.span) : query.seen]
        return FLAGGED if _contains(seen, self.keyword_ids) else CLEAN


class ScriptedModel(ScoringModel):
    """Each [CLS] score is the next one from `scores` (0.0 once they run out), in query order."""

    scores: list[float]

    def _score(self, history: list[int], query: Any) -> float:
        return self.scores.pop(0) if self.scores else 0.0


class SimpleRequest:
    """The keyword arguments of a `step` call, read like a `StepRequest`."""

    def __init__(self, kw: dict[str, Any]) -> None:
        self.check = kw.get("check")
        self.checks = kw.get("checks")


def _step_kwargs(request: StepRequest) -> dict[str, Any]:
    kw: dict[str, Any] = {"want_logits": request.want_logits}
    for name in ("check", "checks"):
        if hasattr(request, name):
            kw[name] = getattr(request, name)
    return kw


def _parts(tokenizer: Any, seed: int) -> tuple[Any, SafetyHead]:
    return tiny_parts(tokenizer, seed=seed, max_positions=1024, init_cls=False)


def keyword_model(tokenizer: Any, *, span: int | None = None, keyword: str = KEYWORD,
                  seed: int = 0) -> KeywordWindowModel:
    lm, head = _parts(tokenizer, seed)
    model = KeywordWindowModel(lm, tokenizer, head, name="keyword-window")
    model.keyword_ids = [int(i) for i in tokenizer(keyword, add_special_tokens=False)["input_ids"]]
    model.span = span
    return model


def scripted_model(tokenizer: Any, scores: list[float], *, seed: int = 0) -> ScriptedModel:
    lm, head = _parts(tokenizer, seed)
    model = ScriptedModel(lm, tokenizer, head, name="scripted")
    model.scores = list(scores)
    return model


# -- the contract, stated independently ------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    intercepted: bool
    intercept_index: int | None  # response tokens released before the cut
    released: str


def scheduled(strategy: str, period: int, n_tokens: int) -> list[int]:
    """Response positions (token counts) a schedule checks, for each / first / periodic."""
    if strategy == "each":
        return list(range(1, n_tokens + 1))
    if strategy == "first":
        return [1] if n_tokens >= 1 else []
    if strategy == "periodic":
        return list(range(period, n_tokens + 1, period))
    raise ValueError(f"no independent statement for strategy {strategy!r}")


def whole_text_tokens(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Token ids of the whole text and the end offset of each token in it."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [int(i) for i in enc["input_ids"]], [int(end) for _, end in enc["offset_mapping"]]


def expected_outcome(tokenizer: Any, text: str, config: GuardConfig, *, keyword: str = KEYWORD,
                     span: int | None = None) -> Outcome:
    """What a session must release for `text` under `config`, whatever the chunking."""
    ids, ends = whole_text_tokens(tokenizer, text)
    kw = [int(i) for i in tokenizer(keyword, add_special_tokens=False)["input_ids"]]

    def unsafe(position: int) -> bool:
        seen = ids[:position] if span is None else ids[max(0, position - span) : position]
        score = FLAGGED if _contains(seen, kw) else CLEAN
        return score >= config.threshold

    n = len(ids)
    positions = scheduled(config.strategy, config.period, n)
    if not positions or positions[-1] != n:
        positions.append(n)  # the covering check at close
    streak, released = 0, 0
    for position in positions:
        final = position == n
        flagged = unsafe(position)
        streak = streak + 1 if flagged else 0
        if streak >= config.tau or (final and flagged):
            return Outcome(True, released, text[: ends[released - 1]] if released else "")
        if not flagged:
            released = max(released, position - config.hold_back)
    return Outcome(False, None, text)


def text_upto(tokenizer: Any, text: str, n_tokens: int) -> str:
    """The input text covered by its first `n_tokens` tokens (whole-text tokenisation)."""
    if n_tokens <= 0:
        return ""
    _, ends = whole_text_tokens(tokenizer, text)
    return text[: ends[min(n_tokens, len(ends)) - 1]]


def tokens_before(tokenizer: Any, text: str, needle: str) -> int:
    """How many whole-text tokens end at or before the first occurrence of `needle`."""
    _, ends = whole_text_tokens(tokenizer, text)
    cut = text.index(needle)
    return sum(1 for end in ends if end <= cut)


#: Sessions check on token positions (the engine's side of the contract), so even a coarse chunk
#: releases exactly what the contract says. False restores the weaker chunk-end expectation.
POSITIONS_ON_TOKENS = True


def words_of(text: str) -> list[str]:
    """Word by word, each word with its leading space, as chat APIs stream deltas."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def assert_released_before_the_cut(tokenizer: Any, text: str, released: str, config: GuardConfig, *,
                                   exact: bool, safe_prefix: str = "", keyword: str = KEYWORD) -> Outcome:
    """Nothing flagged was shown, nor the hold-back margin before it, yet the safe text was.

    `exact`: the release equals the contract. Otherwise (a coarse chunking, before sessions
    check on token positions) it may instead equal what a check at the end of the
    `safe_prefix` chunk covered, minus the hold-back: nothing in between, nothing more.
    """
    expected = expected_outcome(tokenizer, text, config, keyword=keyword)
    assert expected.intercepted and keyword not in expected.released
    assert keyword not in released
    assert expected.released.startswith(released), "released past the last safe check minus the hold-back"
    if exact or POSITIONS_ON_TOKENS:
        assert released == expected.released
    else:
        committed = tokens_before(tokenizer, text, safe_prefix[safe_prefix.rindex(" "):])
        floor = text_upto(tokenizer, text, committed - config.hold_back)
        assert floor and released in (floor, expected.released), "not the last safe check minus the hold-back"
    return expected
