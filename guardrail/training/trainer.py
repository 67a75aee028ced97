"""Train the [CLS] path (embedding, [CLS]-only adapters, head) over cached keys/values."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from guardrail.model.engine import SafetyModel
from guardrail.model.head import SafetyHead
from guardrail.training.kvstore import Shard, load_cache


@dataclass
class TrainConfig:
    epochs: int = 4
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0
    #: Start from these head weights instead of a fresh head (fine-tuning experiments only:
    #: folds always start fresh, or the left-out source would leak through the start point).
    init_state: dict[str, torch.Tensor] | None = None
    #: Distillation: a teacher's unsafe probability for every check of a shard ([B, M], keyed
    #: by the shard's path), trained towards instead of the hard labels. The labels still pick
    #: the checks that count and balance the classes.
    soft_targets: dict[Path, torch.Tensor] | None = None


def reset_head(model: SafetyModel, seed: int) -> None:
    """Fresh parameters in place (the model's adapter hooks keep pointing at them)."""
    torch.manual_seed(seed)
    fresh = SafetyHead(model.head.config)
    fresh.init_cls_from(model.embed.weight)  # type: ignore[arg-type]
    model.head.load_state_dict(fresh.state_dict())


def _class_weights(shards: list[Shard]) -> torch.Tensor:
    counts = torch.zeros(2)
    for shard in shards:
        for s in shard.samples:
            counts[s.prompt_label] += 1
    return counts.sum() / (2 * counts.clamp(min=1))


def train(
    model: SafetyModel, shards: list[Shard], config: TrainConfig, *, desc: str = "train"
) -> list[float]:
    """Each sample weighs 1 (its checks share it), classes are balanced. Returns epoch losses."""
    if config.init_state is not None:
        torch.manual_seed(config.seed)
        model.head.load_state_dict(config.init_state)
    else:
        reset_head(model, config.seed)
    head = model.head
    head.train()
    head.requires_grad_(True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * len(shards)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(steps, 1), pct_start=0.1
    )
    class_weight = _class_weights(shards)
    rng = random.Random(config.seed)
    losses: list[float] = []
    progress = tqdm(total=steps, desc=desc, unit="batch")
    for _ in range(config.epochs):
        order = shards[:]
        rng.shuffle(order)
        total, count = 0.0, 0
        for shard in order:
            cache, _ = load_cache(model, shard)
            labels = shard.labels()
            empty = torch.zeros(len(shard.samples), 0, dtype=torch.long, device=model.device)
            _, cls_hidden = model.forward_pass(cache, empty, shard.queries())
            assert cls_hidden is not None
            logits = head.logits(cls_hidden)
            valid = labels >= 0
            target: torch.Tensor = labels[valid].to(logits.device)
            if config.soft_targets is not None:
                unsafe = config.soft_targets[shard.path].to(logits.device)[valid]
                target = torch.stack([1.0 - unsafe, unsafe], dim=-1)
            per_check = nn.functional.cross_entropy(logits[valid], target, reduction="none")
            checks_per_row = valid.sum(1, keepdim=True).expand_as(valid)[valid].float()
            weights = class_weight[labels[valid]] / checks_per_row
            loss = (per_check * weights.to(per_check.device)).sum() / len(shard.samples)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += float(loss) * len(shard.samples)
            count += len(shard.samples)
            progress.update(1)
            progress.set_postfix(loss=f"{total / max(count, 1):.4f}")
        losses.append(total / max(count, 1))
    progress.close()
    head.eval()
    head.requires_grad_(False)
    return losses


@dataclass
class Scored:
    """Scores of one group: the prompt check per sample, and every check of every sample."""

    prompt_scores: np.ndarray
    prompt_labels: np.ndarray
    check_scores: list[list[float]]
    check_labels: list[list[int]]
    pooled: np.ndarray
    texts: list[str]


def _shard_probabilities(model: SafetyModel, shard: Shard) -> tuple[torch.Tensor, torch.Tensor]:
    """One shard through the [CLS] path: unsafe probability at every check ([B, M], CPU), pooled states."""
    cache, pooled_states = load_cache(model, shard)
    empty = torch.zeros(len(shard.samples), 0, dtype=torch.long, device=model.device)
    _, cls_hidden = model.forward_pass(cache, empty, shard.queries())
    assert cls_hidden is not None
    return model.head.unsafe_probability(cls_hidden).cpu(), pooled_states


@torch.inference_mode()
def check_probabilities(model: SafetyModel, shards: list[Shard]) -> list[torch.Tensor]:
    """The model's unsafe probability at every check of every shard ([B, M] each, on the CPU)."""
    return [_shard_probabilities(model, shard)[0] for shard in shards]


@torch.inference_mode()
def score(model: SafetyModel, shards: list[Shard]) -> Scored:
    prompt_scores, prompt_labels, pooled, texts = [], [], [], []
    check_scores: list[list[float]] = []
    check_labels: list[list[int]] = []
    for shard in shards:
        probs, pooled_states = _shard_probabilities(model, shard)
        for b, sample in enumerate(shard.samples):
            row = probs[b, : len(sample.checks)].tolist()
            check_scores.append(row)
            check_labels.append(list(sample.labels))
            prompt_scores.append(row[0])
            prompt_labels.append(sample.prompt_label)
            texts.append(sample.text)
        pooled.append(pooled_states.cpu().numpy())
    return Scored(
        np.array(prompt_scores),
        np.array(prompt_labels),
        check_scores,
        check_labels,
        np.concatenate(pooled) if pooled else np.zeros((0, 1)),
        texts,
    )
