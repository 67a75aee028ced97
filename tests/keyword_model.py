"""A stand-in safety model whose verdicts follow the text it reads (no tests here).

The forward passes are real (step_many, caches, masks, several [CLS] rows per pass); only
the head's numbers are replaced: 0.99 when the span a check reads contains a keyword, else
0.01. Its head also has the 13 moderation category outputs, scored the same way from their
own words (`CATEGORY_WORDS`): " knife" fires `violence` while the binary score stays 0.01,
" bomb" fires the binary score and `illicit/violent`. Every check of a pass gets its own
scores, so it can drive token-position schedules.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.head import MODERATION_CATEGORIES, CategoryHead, HeadConfig, SafetyHead
from guardrail.model.masks import ClsQuery

UNSAFE_WORD = " bomb"
CATEGORY_WORDS: dict[str, dict[str, float]] = {
    " bomb": {"illicit/violent": 0.99},
    " knife": {"violence": 0.99},
    " fight": {"violence": 0.4},  # under the head's calibrated 0.5: fires only under a lower threshold
}
"""Per word, the category probabilities a check reads when its span contains the word (max over words)."""
BASE_CATEGORY_SCORE = 0.01
HEAD_CATEGORY_THRESHOLDS = {name: 0.5 for name in MODERATION_CATEGORIES} | {"illicit/violent": 0.6}
"""The keyword head's calibrated category thresholds (one differs from 0.5, so a surface that ignores
them shows)."""


class KeywordSafetyModel(SafetyModel):
    """A tiny random LM whose [CLS] score is 0.99 when a checked span contains a keyword."""

    keyword_ids: list[list[int]]
    delay_s = 0.0

    def __init__(self, lm: Any, tokenizer: Any, head: SafetyHead, **kwargs: Any) -> None:
        if head.categories is None:
            head.categories = CategoryHead(head.config.hidden_size, MODERATION_CATEGORIES,
                                           HEAD_CATEGORY_THRESHOLDS)
        super().__init__(lm, tokenizer, head, **kwargs)
        self.category_word_ids = [
            ([int(i) for i in tokenizer(word, add_special_tokens=False)["input_ids"]], scores)
            for word, scores in CATEGORY_WORDS.items()
        ]

    def step(self, cache: Any, token_ids: list[int], **kwargs: Any) -> StepOutput:
        if self.delay_s:
            time.sleep(self.delay_s)
        past = cache.get_seq_length()
        out = super().step(cache, token_ids, **kwargs)
        checks = kwargs.get("checks") or ([kwargs["check"]] if kwargs.get("check") is not None else [])
        self._score(StepRequest(cache, token_ids, checks=list(checks)), past, out)
        return out

    def step_many(self, requests: list[StepRequest]) -> list[StepOutput]:
        if len(requests) < 2:  # the engine hands one stream to `step`, which scores it
            return super().step_many(requests)
        if self.delay_s:
            time.sleep(self.delay_s)
        before = [r.cache.get_seq_length() for r in requests]
        outputs = super().step_many(requests)
        for r, past, out in zip(requests, before, outputs, strict=True):
            self._score(r, past, out)
        return outputs

    def _score(self, request: StepRequest, past: int, out: StepOutput) -> None:
        history = getattr(request.cache, "_kw_history", [])[:past] + list(request.token_ids)
        request.cache._kw_history = history  # type: ignore[attr-defined]
        spans = [_visible(history, q) for q in request.checks]
        out.scores = [0.99 if self.flags(span) else 0.01 for span in spans]
        out.score = out.scores[-1] if out.scores else None
        out.category_scores = [self.category_probabilities(span) for span in spans]
        out.categories = out.category_scores[-1] if out.category_scores else {}

    def flags(self, seen: list[int]) -> bool:
        return any(_contains(seen, kw) for kw in self.keyword_ids)

    def category_probabilities(self, seen: list[int]) -> dict[str, float]:
        """Every category at 0.01, raised by the category words the span contains."""
        scores = dict.fromkeys(self.head.category_names, BASE_CATEGORY_SCORE)
        for ids, fired in self.category_word_ids:
            if _contains(seen, ids):
                for name, probability in fired.items():
                    scores[name] = max(scores[name], probability)
        return scores


def _visible(history: list[int], query: ClsQuery) -> list[int]:
    """What one [CLS] query reads: the prompt and the response so far, or its last `window` tokens
    (the engine's mask, `guardrail.model.masks.cls_visibility`); the gap splits a keyword."""
    if query.window is None or query.seen - query.window <= query.prompt_len:
        return history[: query.seen]
    return [*history[: query.prompt_len], -1, *history[query.seen - query.window : query.seen]]


def _contains(seq: list[int], sub: list[int]) -> bool:
    n = len(sub)
    return any(seq[i : i + n] == sub for i in range(len(seq) - n + 1))


def tiny_parts(tokenizer: Any, *, seed: int = 0, max_positions: int = 512, init_cls: bool = True,
               lively_adapters: bool = False) -> tuple[LlamaForCausalLM, SafetyHead]:
    """A 2-layer random Llama on the given tokenizer and a [CLS] head for it: the tests' tiny model.

    `lively_adapters` gives the [CLS] adapters non-trivial weights, so a mask bug shows in scores.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
    )
    lm = LlamaForCausalLM(config).eval()
    lm.requires_grad_(False)
    head = SafetyHead(HeadConfig(hidden_size=32, num_layers=2, adapter_rank=4, classifier_hidden=16))
    with torch.no_grad():
        if init_cls:
            head.init_cls_from(lm.get_input_embeddings().weight)
        if lively_adapters:
            for adapter in head.adapters:
                torch.nn.init.normal_(adapter.up.weight, std=0.5)
                torch.nn.init.normal_(adapter.bias, std=0.5)
    return lm, head


def make_keyword_model(tokenizer: Any, *, seed: int = 0,
                       max_context: int | None = None) -> KeywordSafetyModel:
    """A 2-layer random Llama with the keyword head, on the given tokenizer."""
    lm, head = tiny_parts(tokenizer, seed=seed)
    model = KeywordSafetyModel(lm, tokenizer, head, name="keyword", max_context=max_context)
    ids = tokenizer(UNSAFE_WORD, add_special_tokens=False)["input_ids"]
    model.keyword_ids = [[int(i) for i in ids]]
    return model
