"""A stand-in safety model whose verdicts follow the text it reads (no tests here).

The forward passes are real (step_many, caches, masks, several [CLS] rows per pass); only
the head's number is replaced: 0.99 when the span a check reads contains a keyword, else
0.01. Every check of a pass gets its own score, so it can drive token-position schedules.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.head import HeadConfig, SafetyHead

UNSAFE_WORD = " bomb"


class KeywordSafetyModel(SafetyModel):
    """A tiny random LM whose [CLS] score is 0.99 when a checked span contains a keyword."""

    keyword_ids: list[list[int]]
    delay_s = 0.0

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
        out.scores = [0.99 if self.flags(history[: q.seen]) else 0.01 for q in request.checks]
        out.score = out.scores[-1] if out.scores else None

    def flags(self, seen: list[int]) -> bool:
        return any(_contains(seen, kw) for kw in self.keyword_ids)


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
