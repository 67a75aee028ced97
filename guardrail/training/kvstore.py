"""Keys and values of training sequences, computed once and kept on disk.

Ordinary tokens never attend to [CLS], so their keys and values depend on nothing that is
trained. Computing them once (fp16 shards, grouped by source so whole sources can be left
out) makes every epoch and every leave-one-source-out fold cost only the [CLS] path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import DynamicCache

from guardrail.model.engine import SafetyModel
from guardrail.model.masks import ClsQuery
from guardrail.model.quantize import quantization_of
from guardrail.model.smoothing import is_smoothed
from guardrail.training.samples import Sample


@dataclass
class Shard:
    path: Path
    group: str
    samples: list[Sample]

    def queries(self) -> list[list[ClsQuery]]:
        return [
            [ClsQuery(seen=len(s.prompt_ids) + c, prompt_len=len(s.prompt_ids)) for c in s.checks]
            for s in self.samples
        ]

    def labels(self) -> torch.Tensor:
        """[B, M] labels, -1 where a row has fewer checks than the widest row."""
        width = max(len(s.labels) for s in self.samples)
        return torch.tensor([s.labels + [-1] * (width - len(s.labels)) for s in self.samples])


def kv_name(model: SafetyModel) -> str:
    """The name a model's keys and values are filed under: its name, plus its quantization.

    int8 keys and values differ from fp32 ones (int8 activations in every projection), so they
    get their own folder and their own shard keys and can never be read as the other's. The
    fp32 name is the bare model name, so existing fp32 caches stay valid. Smoothed int8
    features (`guardrail.model.smoothing`) differ again and are filed apart from plain int8 ones.
    """
    mode = quantization_of(model.decoder)
    if mode == "none":
        return model.name
    return f"{model.name}+{mode}" + ("+smooth" if is_smoothed(model.decoder) else "")


def kv_root(work: Path, model: SafetyModel) -> Path:
    """The folder of a model's shards under a training work folder."""
    return work / "kv" / kv_name(model)


def _key(model_name: str, samples: list[Sample]) -> str:
    digest = hashlib.sha256(model_name.encode())
    for s in samples:
        digest.update(json.dumps([s.prompt_ids, s.response_ids]).encode())
    return digest.hexdigest()[:20]


def batches(samples: list[Sample], max_tokens: int = 4096, max_rows: int = 32) -> list[list[Sample]]:
    """Length-sorted batches under a padded-token budget."""
    ordered = sorted(samples, key=lambda s: s.length)
    out: list[list[Sample]] = []
    current: list[Sample] = []
    for sample in ordered:
        width = max([sample.length] + [s.length for s in current])
        if current and (width * (len(current) + 1) > max_tokens or len(current) >= max_rows):
            out.append(current)
            current = []
        current.append(sample)
    if current:
        out.append(current)
    return out


@torch.inference_mode()
def build(model: SafetyModel, root: Path, groups: dict[str, list[Sample]]) -> list[Shard]:
    """Compute (or reuse) the shards of every group."""
    root.mkdir(parents=True, exist_ok=True)
    plan = [(group, batch) for group, samples in groups.items() for batch in batches(samples)]
    shards: list[Shard] = []
    pad = int(model.tokenizer.eos_token_id or 0)
    prefixes: dict[tuple[int, ...], tuple[DynamicCache, torch.Tensor]] = {}
    name = kv_name(model)
    for group, batch in tqdm(plan, desc=f"keys/values ({name})", unit="shard"):
        path = root / f"{_key(name, batch)}.safetensors"
        shards.append(Shard(path, group, batch))
        if path.is_file():
            continue
        width = max(s.length for s in batch)
        rows = [s.prompt_ids + s.response_ids for s in batch]
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
        cache, hidden = _encode(model, ids, rows, prefixes)
        prompt_mask = torch.zeros(len(batch), width, 1, device=model.device)
        for b, s in enumerate(batch):
            prompt_mask[b, : len(s.prompt_ids)] = 1
        pooled = (hidden * prompt_mask).sum(1) / prompt_mask.sum(1)
        tensors = {"pooled": pooled.cpu().contiguous()}
        for layer_idx, layer in enumerate(cache.layers):
            tensors[f"k{layer_idx}"] = layer.keys.to(torch.float16).cpu().contiguous()  # type: ignore[union-attr]
            tensors[f"v{layer_idx}"] = layer.values.to(torch.float16).cpu().contiguous()  # type: ignore[union-attr]
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path)
    return shards


def _common_prefix(rows: list[list[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return n


def _encode(
    model: SafetyModel,
    ids: torch.Tensor,
    rows: list[list[int]],
    prefixes: dict[tuple[int, ...], tuple[DynamicCache, torch.Tensor]],
) -> tuple[DynamicCache, torch.Tensor]:
    """Encode a batch; the chat template's shared opening is encoded once and reused."""
    shared = max(0, _common_prefix(rows) - 1)
    if shared < 8:
        cache = model.new_cache()
        out = model.decoder(input_ids=ids, use_cache=True, **{model._cache_kw: cache})
        return cache, out.last_hidden_state.float()
    key = tuple(rows[0][:shared])
    if key not in prefixes:
        prefix_cache = model.new_cache()
        out = model.decoder(input_ids=ids[:1, :shared], use_cache=True, **{model._cache_kw: prefix_cache})
        prefixes[key] = (prefix_cache, out.last_hidden_state.float())
    prefix_cache, prefix_hidden = prefixes[key]
    batch = ids.shape[0]
    cache = model.new_cache()
    for layer_idx, layer in enumerate(prefix_cache.layers):
        keys, values = layer.keys, layer.values  # type: ignore[union-attr]
        cache.update(keys.expand(batch, -1, -1, -1).contiguous(),  # type: ignore[union-attr]
                     values.expand(batch, -1, -1, -1).contiguous(), layer_idx)  # type: ignore[union-attr]
    out = model.decoder(input_ids=ids[:, shared:], use_cache=True, **{model._cache_kw: cache})
    hidden = torch.cat([prefix_hidden.expand(batch, -1, -1), out.last_hidden_state.float()], 1)
    return cache, hidden


def load_cache(model: SafetyModel, shard: Shard) -> tuple[DynamicCache, torch.Tensor]:
    """The shard's cache in the model's dtype, and its mean-pooled prompt states."""
    tensors = load_file(str(shard.path), device=str(model.device))
    cache = model.new_cache()
    n_layers = len(model.decoder.layers)
    for layer_idx in range(n_layers):
        cache.update(
            tensors[f"k{layer_idx}"].to(model.dtype), tensors[f"v{layer_idx}"].to(model.dtype), layer_idx
        )
    return cache, tensors["pooled"]
