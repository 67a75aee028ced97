"""Training samples: token ids, checked positions and a label per check.

A sample is one conversation. Prompt-level samples are checked once, right after the
assistant header; trajectories are checked every few response tokens, so the head learns
to flag a harmful answer mid-way and to stay quiet on benign answers and on refusals.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from guardrail.model.prompts import encode_prompt, encode_text, fit_prompt
from guardrail.training.sources import Example

MAX_TOKENS = 256
CHECK_EVERY = 4


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    checks: list[int]  # response lengths at which [CLS] is evaluated (0: the prompt check)
    labels: list[int]
    source: str
    family: str | None = None
    text: str = ""  # the prompt text, for text baselines and leak checks
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    @property
    def prompt_label(self) -> int:
        return self.labels[0] if self.checks and self.checks[0] == 0 else max(self.labels)


def prompt_sample(tokenizer: PreTrainedTokenizerBase, example: Example) -> Sample:
    ids = fit_prompt(encode_prompt(tokenizer, example.text), MAX_TOKENS)
    return Sample(ids, [], [0], [example.label], example.source, example.family, example.text)


def trajectory_sample(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    *,
    prompt_label: int,
    response_label: int,
    source: str,
    refusal_len: int = 0,
    rng: random.Random | None = None,
) -> Sample:
    """Checks every CHECK_EVERY tokens (phase jittered) with the prompt check first.

    `refusal_len` response tokens at the start are a refusal: labelled benign even when the
    prompt is harmful, because a refusal is the safe continuation.
    """
    prompt_ids = fit_prompt(encode_prompt(tokenizer, prompt), MAX_TOKENS // 2)
    response_ids = encode_text(tokenizer, response)[: MAX_TOKENS - len(prompt_ids)]
    start = 1 + (rng.randrange(CHECK_EVERY) if rng else 0)
    checks = [0, *range(start, len(response_ids) + 1, CHECK_EVERY)]
    labels = [prompt_label] + [0 if n <= refusal_len else response_label for n in checks[1:]]
    return Sample(prompt_ids, response_ids, checks, labels, source, None, prompt)


def segmented_sample(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    segments: tuple[tuple[str, int], ...] | list[tuple[str, int]],
    *,
    prompt_label: int,
    source: str,
    max_tokens: int = MAX_TOKENS,
    rng: random.Random | None = None,
) -> Sample:
    """A written answer made of labelled segments; each check takes the label of the text it has read.

    Once an unsafe segment has been read, every later check stays unsafe: harm is not undone
    by a benign paragraph after it.
    """
    prompt_ids = fit_prompt(encode_prompt(tokenizer, prompt), MAX_TOKENS // 2)
    response_ids: list[int] = []
    unsafe_from: int | None = None
    text = ""
    for segment, label in segments:
        text += segment
        if label and unsafe_from is None:
            # The first token that belongs to the unsafe segment.
            unsafe_from = len(encode_text(tokenizer, text[: len(text) - len(segment)])) + 1
    response_ids = encode_text(tokenizer, text)[: max_tokens - len(prompt_ids)]
    start = 1 + (rng.randrange(CHECK_EVERY) if rng else 0)
    checks = [0, *range(start, len(response_ids) + 1, CHECK_EVERY)]
    labels = [prompt_label] + [
        1 if (prompt_label or (unsafe_from is not None and n >= unsafe_from + 8)) else 0 for n in checks[1:]
    ]
    # The first few tokens of a harmful segment ("Sure, here") do not yet read as harm:
    # those checks are left unlabelled rather than forced either way.
    if unsafe_from is not None and not prompt_label:
        labels = [
            -1 if (i and unsafe_from <= n < unsafe_from + 8) else label
            for i, (n, label) in enumerate(zip(checks, labels, strict=True))
        ]
    return Sample(prompt_ids, response_ids, checks, labels, source, None, prompt)
