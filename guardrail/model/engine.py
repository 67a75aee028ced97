"""The safety-augmented model: a frozen causal LM plus the [CLS] safety path.

One forward pass can append new tokens to a KV cache *and* evaluate [CLS] queries over it
(the fast path). The [CLS] entries are cropped from the cache afterwards, so a check costs
one extra query position and never re-encodes the sequence.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from guardrail.model.quantize import silence_torchao_notices  # noqa: F401  (log filters before transformers imports torchao)

# isort: split

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from guardrail.model.head import SafetyHead
from guardrail.model.kvcache import (
    BatchScratch,
    StreamBatchLayer,
    attention_limit,
    new_stream_cache,
    rolled_back_on_error,
)
from guardrail.model.masks import ClsQuery, cls_visibility, strategic_mask, strategic_positions


@dataclass
class StepRequest:
    """One stream's share of a batched step: its cache, its new tokens, its [CLS] checks.

    `checks` lists every [CLS] query of the pass, in order (a chunk of N tokens carries one
    per scheduled position). `check` is the last of them: single-check callers pass only it,
    and the two are kept consistent on construction.
    """

    cache: DynamicCache
    token_ids: list[int]
    check: ClsQuery | None = None
    want_logits: bool = False
    checks: list[ClsQuery] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.checks:
            if self.check is not None and self.check != self.checks[-1]:
                raise ValueError("`check` must be the last of `checks`")
            self.check = self.checks[-1]
        elif self.check is not None:
            self.checks = [self.check]


@dataclass
class StepOutput:
    """Next-token logits (over the original vocabulary) and the unsafe scores of the checks.

    `scores` holds one score per query of the request's `checks`, in order; `score` is the
    last of them (None when nothing was checked).
    """

    logits: torch.Tensor | None
    score: float | None
    scores: list[float] = field(default_factory=list)
    categories: dict[str, float] = field(default_factory=dict)
    """Category probabilities at the last check (empty when the head has no category outputs)."""
    category_scores: list[dict[str, float]] = field(default_factory=list)
    """Category probabilities at every check, aligned with `scores` (empty dicts without categories)."""


class SafetyModel(nn.Module):
    """A causal LM with the explicit safety signal attached.

    The LM's parameters are frozen; only `head` is trainable. Adapter hooks act on the
    trailing [CLS] rows of a pass and are inert in any pass without [CLS].
    """

    def __init__(
        self,
        lm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        head: SafetyHead,
        *,
        name: str = "model",
        max_context: int | None = None,
    ) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.head = head.to(device=lm.device, dtype=torch.float32)
        self.name = name
        self.decoder = lm.get_decoder()
        self.lm_head = lm.get_output_embeddings()
        self.embed = lm.get_input_embeddings()
        limit = int(getattr(lm.config, "max_position_embeddings", 4096) or 4096)
        window = attention_limit(lm.config)  # within it, sliding-window layers attend fully
        self.max_context = min(limit, max_context or 4096, window or limit)
        self.vocab_size = int(self.lm_head.weight.shape[0])
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._active_cls = 0
        self._lock = threading.RLock()  # adapter hooks read per-pass state; the scratch is shared
        self._scratch = BatchScratch()
        layers = getattr(self.decoder, "layers", None)
        if layers is None or len(layers) != len(self.head.adapters):
            raise ValueError(
                f"head has {len(self.head.adapters)} adapters but the model has "
                f"{0 if layers is None else len(layers)} decoder layers"
            )
        hidden = int(self.embed.weight.shape[1])  # type: ignore[index]
        if head.config.hidden_size != hidden:
            raise ValueError(
                f"head was trained for hidden size {head.config.hidden_size}, the model has {hidden}"
            )
        self._hooks = [
            layer.register_forward_hook(self._adapter_hook(adapter))
            for layer, adapter in zip(layers, self.head.adapters, strict=True)
        ]

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def _adapter_hook(self, adapter: nn.Module) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            n = self._active_cls
            if not n:
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            updated = torch.cat([hidden[:, :-n], adapter(hidden[:, -n:].float()).to(hidden.dtype)], 1)
            return (updated, *output[1:]) if isinstance(output, tuple) else updated

        return hook

    def detach(self) -> None:
        """Remove this head's adapter hooks from the language model, which another head may share."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @contextmanager
    def with_head(self, head: SafetyHead) -> Iterator[SafetyModel]:
        """`head` read on this model's language model, its hooks removed on exit: heads of any
        adapter rank compared on the same features, this model's own head left untouched."""
        other = SafetyModel(self.lm, self.tokenizer, head.eval(), name=self.name)
        try:
            yield other
        finally:
            other.detach()

    @contextmanager
    def _cls_rows(self, n: int) -> Iterator[None]:
        self._active_cls = n
        try:
            yield
        finally:
            self._active_cls = 0

    def release_scratch(self) -> None:
        """Free the batched passes' scratch (the server calls it when idle)."""
        with self._lock:
            self._scratch.release()

    def new_cache(self) -> DynamicCache:
        return new_stream_cache(self.lm.config)

    def forward_pass(
        self,
        cache: DynamicCache,
        new_ids: torch.Tensor,
        cls_queries: list[list[ClsQuery]],
        *,
        logits_at: list[int] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Append `new_ids` [B, N] to `cache` and evaluate the [CLS] queries in the same pass.

        Returns (logits at the requested new-token rows [B, len(logits_at), V] or None,
        [CLS] final hidden states [B, M, H] or None). The cache grows by N only.
        """
        batch, n_new = new_ids.shape
        n_cls = max((len(q) for q in cls_queries), default=0)
        past = cache.get_seq_length()
        embeds = self.embed(new_ids)
        if n_cls:
            cls = self.head.cls_embedding.to(embeds.dtype).expand(batch, n_cls, -1)
            embeds = torch.cat([embeds, cls], 1)
        mask = strategic_mask(
            past,
            [n_new] * batch,
            cls_queries or [[] for _ in range(batch)],
            dtype=embeds.dtype,
            device=embeds.device,
        )
        positions = strategic_positions(past, n_new, cls_queries or [[] for _ in range(batch)], embeds.device)
        with rolled_back_on_error([cache], [past]):
            hidden = self._decode(embeds, mask, positions, cache, n_cls)
            if n_cls:
                cache.crop(-n_cls)
            logits = None
            if logits_at:
                logits = self.lm_head(hidden[:, logits_at]).float()
            cls_hidden = hidden[:, n_new:] if n_cls else None
        return logits, cls_hidden

    def _decode(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Cache,
                n_cls: int) -> torch.Tensor:
        """One decoder pass with the [CLS] adapters on the last `n_cls` rows; final hidden states."""
        with self._lock, self._cls_rows(n_cls):
            out = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                               use_cache=True, **{self._cache_kw: cache})
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    @torch.inference_mode()
    def step(
        self,
        cache: DynamicCache,
        token_ids: list[int],
        *,
        check: ClsQuery | None = None,
        want_logits: bool = True,
        checks: list[ClsQuery] | None = None,
    ) -> StepOutput:
        """Feed tokens to one stream's cache; evaluate its checks in the same pass."""
        queries = list(checks) if checks else ([check] if check is not None else [])
        if not token_ids and not queries:
            return StepOutput(None, None)
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        if not token_ids:
            ids = ids.reshape(1, 0)
        logits_at = [len(token_ids) - 1] if (want_logits and token_ids) else None
        logits, cls_hidden = self.forward_pass(cache, ids, [queries], logits_at=logits_at)
        scores: list[float] = []
        per_check: list[dict[str, float]] = []
        if cls_hidden is not None:
            rows = cls_hidden[0, : len(queries)]
            scores = [float(p) for p in self.head.unsafe_probability(rows).reshape(-1)]
            per_check = self.category_rows(rows)
        return StepOutput(logits[0, -1] if logits is not None else None, scores[-1] if scores else None,
                          scores, per_check[-1] if per_check else {}, per_check)

    def category_rows(self, cls_rows: torch.Tensor) -> list[dict[str, float]]:
        """[M, hidden] [CLS] rows -> one {category: probability} per row, in one product.

        Every check position of a pass gets its categories (a policy acts on each); without
        category outputs each row's dict is empty.
        """
        names = self.head.category_names
        if not names:
            return [{} for _ in range(cls_rows.shape[0])]
        table = self.head.category_probabilities(cls_rows).tolist()
        return [dict(zip(names, row, strict=True)) for row in table]

    def score_prefixes(
        self,
        ids: torch.Tensor,
        lengths: list[int],
        queries: list[list[ClsQuery]],
        *,
        return_logits: bool = False,
    ) -> torch.Tensor:
        """Score many checked prefixes of many sequences in one pass each.

        `ids` [B, T] is right-padded to the longest of `lengths`. Ordinary keys and values
        are computed once without gradients (they do not depend on anything trained), then
        every [CLS] query attends to its own prefix. Returns unsafe probabilities [B, M] (or
        head logits [B, M, 2]); padded query slots hold garbage and must be ignored.
        This is the same computation as the incremental `step`, which is what makes the
        train-time and serve-time scores agree.
        """
        cache = self.new_cache()
        with torch.no_grad():
            self.decoder(input_ids=ids, use_cache=True, **{self._cache_kw: cache})
        batch = ids.shape[0]
        empty = torch.zeros(batch, 0, dtype=torch.long, device=ids.device)
        _, cls_hidden = self.forward_pass(cache, empty, queries)
        assert cls_hidden is not None
        logits = self.head.logits(cls_hidden)
        if return_logits:
            return logits
        return torch.softmax(logits.float(), -1)[..., 1]

    @torch.inference_mode()
    def step_many(self, requests: list[StepRequest]) -> list[StepOutput]:
        """Advance several independent streams in one forward pass.

        Each stream keeps its own cache. Their caches are left-padded into one batch, so
        the projections and MLPs of all streams' new tokens and [CLS] queries run as one
        large matrix product (small products are inefficient on CPU and GPU alike); each
        stream's cache then grows by its own new tokens only. Every stream may carry several
        checks; rows with fewer are padded with [CLS] rows that see only themselves.
        """
        if len(requests) == 1:
            r = requests[0]
            return [self.step(r.cache, r.token_ids, checks=r.checks, want_logits=r.want_logits)]
        if not requests:
            return []
        device = self.device
        pasts = [r.cache.get_seq_length() for r in requests]
        news = [len(r.token_ids) for r in requests]
        big_past, n_new = max(pasts), max(news)
        n_cls = max(len(r.checks) for r in requests)
        batch = len(requests)
        pad_id = 0
        ids = torch.full((batch, n_new), pad_id, dtype=torch.long, device=device)
        for b, r in enumerate(requests):
            if r.token_ids:
                ids[b, : news[b]] = torch.tensor(r.token_ids, dtype=torch.long, device=device)
        embeds = self.embed(ids)
        if n_cls:
            cls = self.head.cls_embedding.to(embeds.dtype).expand(batch, n_cls, -1)
            embeds = torch.cat([embeds, cls], 1)
        keys = big_past + n_new + n_cls
        allowed = torch.zeros(batch, n_new + n_cls, keys, dtype=torch.bool, device=device)
        positions = torch.zeros(batch, n_new + n_cls, dtype=torch.long, device=device)
        for b, r in enumerate(requests):
            offset = big_past - pasts[b]  # left padding of this row's past
            # column of logical position t: offset + t for the past, big_past + (t - past) for new tokens
            cols = torch.cat(
                [
                    torch.arange(offset, big_past, device=device),
                    torch.arange(big_past, big_past + news[b], device=device),
                ]
            )
            for j in range(n_new):
                if j < news[b]:
                    allowed[b, j, cols[: pasts[b] + j + 1]] = True
                    positions[b, j] = pasts[b] + j
                else:
                    allowed[b, j, big_past + j] = True
            for i in range(n_cls):
                row = n_new + i
                if i < len(r.checks):
                    visible = cls_visibility(pasts[b] + news[b], r.checks[i], device)
                    allowed[b, row, cols[visible]] = True
                    positions[b, row] = r.checks[i].seen
                allowed[b, row, big_past + row] = True
        mask = torch.zeros(batch, 1, n_new + n_cls, keys, dtype=embeds.dtype, device=device)
        mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(embeds.dtype).min)
        streams = [r.cache for r in requests]
        batch_view = Cache(layers=[StreamBatchLayer(streams, layer_idx, pasts, news, big_past, self._scratch)
                                   for layer_idx in range(len(self.decoder.layers))])
        with rolled_back_on_error(streams, pasts):
            hidden = self._decode(embeds, mask, positions, batch_view, n_cls)
            probabilities = self.head.unsafe_probability(hidden[:, n_new:]) if n_cls else None
            categories = self._batched_categories(hidden[:, n_new:], [len(r.checks) for r in requests])
            outputs = []
            for b, r in enumerate(requests):
                logits = None
                if r.want_logits and news[b]:
                    logits = self.lm_head(hidden[b, news[b] - 1]).float()
                scores: list[float] = []
                if probabilities is not None and r.checks:
                    scores = [float(p) for p in probabilities[b, : len(r.checks)]]
                per_check = categories[b]
                outputs.append(StepOutput(logits, scores[-1] if scores else None, scores,
                                          per_check[-1] if per_check else {}, per_check))
        return outputs

    def _batched_categories(self, cls_hidden: torch.Tensor,
                            counts: list[int]) -> list[list[dict[str, float]]]:
        """Per stream, the categories of each of its `counts[b]` checks: one product over all rows."""
        if not any(counts):
            return [[] for _ in counts]
        rows = torch.cat([cls_hidden[b, :n] for b, n in enumerate(counts)])
        flat = self.category_rows(rows)
        out: list[list[dict[str, float]]] = []
        start = 0
        for n in counts:
            out.append(flat[start : start + n])
            start += n
        return out
