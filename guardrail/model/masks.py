"""Attention masks for strategic attention.

Ordinary tokens attend causally to ordinary tokens only. Each [CLS] query attends to the
prompt, to the response so far (all of it, or a window of the most recent tokens), and to
itself. [CLS] rows always sit after the ordinary rows of a forward pass, and no ordinary row
ever sees them, so they can be dropped from the cache afterwards without a trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClsQuery:
    """One [CLS] query: it reads the first `seen` tokens of its row's sequence."""

    seen: int
    prompt_len: int
    window: int | None = None


def cls_visibility(key_len: int, query: ClsQuery, device: torch.device | None = None) -> torch.Tensor:
    """Boolean [key_len]: which ordinary positions one [CLS] query may read."""
    pos = torch.arange(key_len, device=device)
    visible = pos < query.seen
    if query.window is not None and query.window < key_len:
        recent = pos >= query.seen - query.window
        visible &= (pos < query.prompt_len) | recent
    return visible


def strategic_mask(
    past_len: int,
    new_lens: list[int],
    cls_queries: list[list[ClsQuery]],
    *,
    dtype: torch.dtype,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Additive 4-D mask [B, 1, N + M, past + N + M] for N new tokens and M [CLS] per row.

    Rows are right-padded to the longest N and M; padded ordinary rows see causally (their
    outputs are ignored), padded [CLS] rows see position 0 (never fully masked, which would
    make softmax undefined).
    """
    batch = len(new_lens)
    n_new = max(new_lens) if new_lens else 0
    n_cls = max((len(q) for q in cls_queries), default=0)
    ordinary = past_len + n_new
    keys = ordinary + n_cls
    allowed = torch.zeros(batch, n_new + n_cls, keys, dtype=torch.bool, device=device)
    causal = torch.ones(n_new, ordinary, dtype=torch.bool, device=device).tril(diagonal=past_len)
    allowed[:, :n_new, :ordinary] = causal
    for b, queries in enumerate(cls_queries):
        for i in range(n_cls):
            row = n_new + i
            if i < len(queries):
                allowed[b, row, :ordinary] = cls_visibility(ordinary, queries[i], device)
            else:
                allowed[b, row, 0] = True
            allowed[b, row, ordinary + i] = True
    mask = torch.zeros(batch, 1, n_new + n_cls, keys, dtype=dtype, device=device)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)
    return mask


def strategic_positions(
    past_len: int, n_new: int, cls_queries: list[list[ClsQuery]], device: torch.device | None = None
) -> torch.Tensor:
    """Position ids [B, N + M]: a [CLS] after a prefix of length p sits at position p."""
    n_cls = max((len(q) for q in cls_queries), default=0)
    rows = []
    for queries in cls_queries:
        cls_pos = [q.seen for q in queries] + [0] * (n_cls - len(queries))
        rows.append(list(range(past_len, past_len + n_new)) + cls_pos)
    return torch.tensor(rows, dtype=torch.long, device=device)
