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

from guardrail.moderation import MODERATION_CATEGORIES as MODERATION_CATEGORIES

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
CATEGORY_WEIGHTS = "categories.safetensors"
CATEGORY_CONFIG = "categories.json"

#: The OpenAI moderation categories (one list, in `guardrail.moderation`); a head may add custom names.


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


#: Per-category Platt calibration: probability = sigmoid(scale * logit + bias).
Calibration = dict[str, tuple[float, float]]


class CategoryHead(nn.Module):
    """Multi-label outputs on the same [CLS] row as the binary classifier: one logit per category.

    A linear read-out of the [CLS] hidden state, trained on frozen features of the binary
    head, so adding or retraining a category never changes the binary verdict. Each output
    carries a Platt calibration (a scale and a bias on its logit, fitted on held-back training
    examples) so its probability means what it says; (1, 0) leaves a raw sigmoid.
    """

    def __init__(
        self,
        hidden_size: int,
        names: tuple[str, ...] | list[str],
        thresholds: dict[str, float] | None = None,
        calibration: Calibration | None = None,
    ):
        super().__init__()
        if len(set(names)) != len(names):
            raise ValueError("category names must be unique")
        self.names: tuple[str, ...] = tuple(names)
        self.linear = nn.Linear(hidden_size, len(self.names))
        self.thresholds: dict[str, float] = {name: 0.5 for name in self.names} | (thresholds or {})
        self.calibration: Calibration = {}
        self.set_calibration(calibration or {})

    def set_calibration(self, calibration: Calibration) -> None:
        """Replace the (scale, bias) of the named outputs; unnamed ones keep theirs."""
        unknown = set(calibration) - set(self.names)
        if unknown:
            raise ValueError(f"calibration for unknown categories: {sorted(unknown)}")
        merged = {name: (1.0, 0.0) for name in self.names} | self.calibration | calibration
        for name, (scale, _) in merged.items():
            if not scale > 0:
                raise ValueError(f"calibration scale for {name!r} must be positive (keeps the ranking)")
        self.calibration = {name: (float(a), float(b)) for name, (a, b) in merged.items()}

    def logits(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        """Raw (uncalibrated) logits, [..., n_categories]."""
        return self.linear(cls_hidden.float())  # type: ignore[no-any-return]

    def calibrated_logits(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor([self.calibration[n][0] for n in self.names], device=cls_hidden.device)
        bias = torch.tensor([self.calibration[n][1] for n in self.names], device=cls_hidden.device)
        return self.logits(cls_hidden) * scale + bias

    def probabilities(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        """Calibrated independent probabilities, sigmoid(scale * logit + bias) per category."""
        return torch.sigmoid(self.calibrated_logits(cls_hidden))

    def with_output(
        self,
        name: str,
        weight: torch.Tensor,
        bias: float,
        threshold: float = 0.5,
        calibration: tuple[float, float] = (1.0, 0.0),
    ) -> CategoryHead:
        """A copy with `name` added (or replaced): the other outputs keep their weights."""
        names = list(self.names)
        if name not in names:
            names.append(name)
        out = CategoryHead(
            self.linear.in_features,
            names,
            self.thresholds | {name: threshold},
            self.calibration | {name: calibration},
        )
        with torch.no_grad():
            for i, existing in enumerate(self.names):
                j = names.index(existing)
                out.linear.weight[j] = self.linear.weight[i]
                out.linear.bias[j] = self.linear.bias[i]
            j = names.index(name)
            out.linear.weight[j] = weight.float().reshape(-1)
            out.linear.bias[j] = float(bias)
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
        #: Optional per-category outputs (see `CategoryHead`); saved in their own files.
        self.categories: CategoryHead | None = None

    def init_cls_from(self, embeddings: torch.Tensor) -> None:
        """Start [CLS] at the mean token embedding so its first queries look like text."""
        with torch.no_grad():
            self.cls_embedding.copy_(embeddings.float().mean(0).to(self.cls_embedding.dtype))

    def logits(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(cls_hidden.float())  # type: ignore[no-any-return]

    def unsafe_probability(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(cls_hidden).float(), dim=-1)[..., 1]

    @property
    def category_names(self) -> tuple[str, ...]:
        """Names of the category outputs, in output order; empty when the head has none."""
        return self.categories.names if self.categories is not None else ()

    @property
    def category_thresholds(self) -> dict[str, float]:
        return dict(self.categories.thresholds) if self.categories is not None else {}

    def category_logits(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        """Raw logits, [..., hidden] -> [..., n_categories]; raises if the head has no category outputs."""
        if self.categories is None:
            raise ValueError("this head has no category outputs")
        return self.categories.logits(cls_hidden)

    def category_probabilities(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        """Calibrated multi-label probabilities, [..., n_categories], in `category_names` order."""
        if self.categories is None:
            raise ValueError("this head has no category outputs")
        return self.categories.probabilities(cls_hidden)

    def category_scores(self, cls_hidden: torch.Tensor) -> dict[str, float]:
        """One [CLS] row ([hidden]) -> {category name: probability}; {} when the head has none."""
        if self.categories is None:
            return {}
        if cls_hidden.dim() != 1:
            raise ValueError(f"expected one [CLS] row of shape [hidden], got {tuple(cls_hidden.shape)}")
        probs = self.category_probabilities(cls_hidden).tolist()
        return dict(zip(self.categories.names, probs, strict=True))

    def binary_state_dict(self) -> dict[str, torch.Tensor]:
        """The binary path's weights ([CLS] embedding, adapters, classifier), without the category outputs
        (those live in their own file and are fitted on the binary path's frozen features)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("categories.")}

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.binary_state_dict().items()}
        save_file(tensors, str(directory / HEAD_WEIGHTS))
        meta = asdict(self.config) | (extra or {})
        (directory / HEAD_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        if self.categories is not None:
            self.save_categories(directory)

    def save_categories(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write only the category outputs (the binary head's files are left as they are)."""
        if self.categories is None:
            raise ValueError("this head has no category outputs")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        linear = self.categories.linear
        save_file(
            {
                "weight": linear.weight.detach().float().cpu().contiguous(),
                "bias": linear.bias.detach().float().cpu().contiguous(),
            },
            str(directory / CATEGORY_WEIGHTS),
        )
        meta = {
            "names": list(self.categories.names),
            "thresholds": self.categories.thresholds,
            "calibration": {
                name: {"scale": scale, "bias": bias}
                for name, (scale, bias) in self.categories.calibration.items()
            },
        } | (extra or {})
        (directory / CATEGORY_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> SafetyHead:
        directory = Path(directory)
        cfg_path, weights = directory / HEAD_CONFIG, directory / HEAD_WEIGHTS
        if not cfg_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"no safety head in {directory} (needs {HEAD_CONFIG} and {HEAD_WEIGHTS})")
        head = cls(HeadConfig.from_dict(json.loads(cfg_path.read_text())))
        head.load_state_dict(load_file(str(weights)))
        if (directory / CATEGORY_CONFIG).is_file() and (directory / CATEGORY_WEIGHTS).is_file():
            head.categories = load_categories(directory, head.config.hidden_size)
        return head


def load_categories(directory: str | Path, hidden_size: int) -> CategoryHead:
    """The category outputs saved next to a head (files without calibration load uncalibrated)."""
    directory = Path(directory)
    meta = json.loads((directory / CATEGORY_CONFIG).read_text())
    calibration = {
        name: (float(row["scale"]), float(row["bias"]))
        for name, row in (meta.get("calibration") or {}).items()
    }
    categories = CategoryHead(hidden_size, meta["names"], meta.get("thresholds"), calibration)
    tensors = load_file(str(directory / CATEGORY_WEIGHTS))
    if tuple(tensors["weight"].shape) != (len(categories.names), hidden_size):
        raise ValueError(f"{directory / CATEGORY_WEIGHTS} does not match {CATEGORY_CONFIG}")
    categories.linear.load_state_dict({"weight": tensors["weight"], "bias": tensors["bias"]})
    return categories


def default_head_dir() -> Path:
    """The head shipped with the package, trained for the default model."""
    return Path(__file__).resolve().parent.parent / "heads" / "smollm2-135m"
