"""The explicit safety signal: a [CLS] embedding, [CLS]-only adapters and a binary head.

[CLS] is kept as its own parameter outside the vocabulary. The tokenizer and the tied LM
head stay untouched, so [CLS] can never be sampled, and no user text can spell it.
Adapters touch only the [CLS] rows of each layer's output; ordinary tokens never attend to
[CLS], so the language model's own computation is unchanged by anything trained here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"


@dataclass
class HeadConfig:
    hidden_size: int
    num_layers: int
    adapter_rank: int = 8
    classifier_hidden: int = 256
    threshold: float = 0.5
    base_model: str = ""
    prompt_format: str = "chat"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ClsLayerAdapter(nn.Module):
    """A residual low-rank update applied to the [CLS] rows after one decoder layer."""

    def __init__(self, hidden_size: int, rank: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.down = nn.Linear(hidden_size, rank, bias=False) if rank else None
        self.up = nn.Linear(rank, hidden_size, bias=False) if rank else None
        if self.up is not None:
            nn.init.zeros_(self.up.weight)  # starts as the identity: the frozen model's own path

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = h + self.bias
        if self.down is not None and self.up is not None:
            scale = h.pow(2).mean(-1, keepdim=True).add(1e-6).rsqrt()
            out = out + self.up(torch.tanh(self.down(h * scale)))
        return out


class SafetyHead(nn.Module):
    """Everything trained for the safety signal; a few MB at most."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.cls_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.adapters = nn.ModuleList(
            ClsLayerAdapter(config.hidden_size, config.adapter_rank) for _ in range(config.num_layers)
        )
        self.classifier = nn.Sequential(
            nn.Linear(config.hidden_size, config.classifier_hidden),
            nn.GELU(),
            nn.Linear(config.classifier_hidden, 2),
        )

    def init_cls_from(self, embeddings: torch.Tensor) -> None:
        """Start [CLS] at the mean token embedding so its first queries look like text."""
        with torch.no_grad():
            self.cls_embedding.copy_(embeddings.float().mean(0).to(self.cls_embedding.dtype))

    def logits(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(cls_hidden.float())  # type: ignore[no-any-return]

    def unsafe_probability(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(cls_hidden).float(), dim=-1)[..., 1]

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / HEAD_WEIGHTS))
        meta = asdict(self.config) | (extra or {})
        (directory / HEAD_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> SafetyHead:
        directory = Path(directory)
        cfg_path, weights = directory / HEAD_CONFIG, directory / HEAD_WEIGHTS
        if not cfg_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"no safety head in {directory} (needs {HEAD_CONFIG} and {HEAD_WEIGHTS})")
        head = cls(HeadConfig.from_dict(json.loads(cfg_path.read_text())))
        head.load_state_dict(load_file(str(weights)))
        return head


def default_head_dir() -> Path:
    """The head shipped with the package, trained for the default model."""
    return Path(__file__).resolve().parent.parent / "heads" / "smollm2-135m"
