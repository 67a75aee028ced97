"""int8 CPU path: the language model's linear layers with int8 weights and int8 activations.

Weights are quantized once by torchao (symmetric, one scale per output row). Activations
are quantized per token at run time (symmetric, one scale per row), so a row's result never
depends on the other rows of its batch: the [CLS] queries and the left-padded streams of a
batched step change nothing for ordinary tokens, and invariant 1 (logits with the guard
attached equal the base model's) holds between the quantized base and guarded models. The
int8 products accumulate in int32, which is exact, so a row gives the same result at any
batch size.

The product itself calls `torch._int_mm` directly: torchao's own CPU linear spends 150-250 us
per call on dispatch and per-call weight sums, several times the fp32 cost of a decode-sized
product, while the bare int8 kernel takes 4-30 us on the default model's shapes.

The safety head, the [CLS] adapters, the embedding and (by default) the tied LM head stay
fp32: the head is tiny, and the tied LM head is the embedding matrix.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import torch
from torch import nn

QuantizeMode = Literal["none", "int8"]
QUANTIZE_MODES: tuple[str, ...] = get_args(QuantizeMode)
#: What a flag or a setting may name: a mode, or "auto" (int8 where it is the fast path).
QuantizeChoice = Literal["auto", "none", "int8"]
QUANTIZE_CHOICES: tuple[str, ...] = get_args(QuantizeChoice)

_EPS = torch.finfo(torch.float32).eps
_NOTICES = (
    ("torchao", "Failed to load"),
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported"),
)


class QuantizeError(ValueError):
    """A quantization mode this build or this model cannot run; the message says why."""


def check_mode(mode: str) -> QuantizeMode:
    """Validate a mode named by a flag, a setting or a caller."""
    if mode not in QUANTIZE_MODES:
        raise QuantizeError(f"unknown quantize mode {mode!r}; use one of {list(QUANTIZE_MODES)}")
    return mode  # type: ignore[return-value]


def resolve_quantize(choice: str, device: str, dtype: torch.dtype) -> QuantizeMode:
    """`auto` is int8 on a CPU in fp32 (several times faster there) and none elsewhere."""
    if choice == "auto":
        return "int8" if device == "cpu" and dtype == torch.float32 else "none"
    if choice not in QUANTIZE_CHOICES:
        raise QuantizeError(f"unknown quantize mode {choice!r}; use one of {list(QUANTIZE_CHOICES)}")
    return check_mode(choice)


class _DropNotices(logging.Filter):
    """Drops log records whose message contains one of the given fragments."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_torchao_notices() -> None:
    """Drop torchao's import-time notices: CUDA kernel libraries a CPU build cannot load, and
    a pytree deprecation. transformers imports torchao whenever it is installed, so this must
    run before transformers is first imported; it is idempotent and touches nothing else."""
    for name, fragment in _NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) and fragment in f.fragments for f in logger.filters):
            logger.addFilter(_DropNotices(fragment))


silence_torchao_notices()


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's int8 weight quantization: int8 values [N, K] and one fp32 scale per row [N]."""
    from torchao.quantization import Int8Tensor
    from torchao.quantization.granularity import PerRow

    quantized = Int8Tensor.from_hp(weight.detach().float(), granularity=PerRow())
    return quantized.qdata.contiguous(), quantized.scale.reshape(-1).float()


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 (torchao's dynamic activation rule): values [M, K], scales [M, 1]."""
    scale = x.abs().amax(-1, keepdim=True).div_(127.5).clamp_(min=_EPS)
    return torch.round(x * scale.reciprocal()).clamp_(-128, 127).to(torch.int8), scale


def _int8_product(rows: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """fp32 rows [M, K] times the int8 weight [N, K]^T, through int8 activations: [M, N] fp32."""
    values, scale = quantize_rows(rows)
    out = torch._int_mm(values, weight.t()).float()
    return out.mul_(scale).mul_(weight_scale)


class _Int8Product(torch.autograd.Function):
    """The int8 product with a straight-through gradient, for training a head on int8 features.

    The forward pass is exactly the inference product (so a head trained through it sees the
    features it will be served); the backward pass treats the rounding as the identity and
    multiplies by the dequantized weight. Only the input gets a gradient: the weights are frozen.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, rows: torch.Tensor, weight: torch.Tensor,
                weight_scale: torch.Tensor, dequantized: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(dequantized)
        return _int8_product(rows, weight, weight_scale)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None]:
        (dequantized,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad @ dequantized, None, None, None


class Int8Linear(nn.Module):
    """A frozen linear layer computing int8 x int8 -> int32, rescaled to the input's dtype.

    When its input needs a gradient (training the [CLS] path on int8 features), the same
    product runs with a straight-through gradient (`_Int8Product`).
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        qdata, scale = quantize_weight(linear.weight)
        # `weight` keeps nn.Linear's [out, in] shape, so code reading `.weight.shape` still works.
        self.register_buffer("weight", qdata)
        self.register_buffer("weight_scale", scale.reshape(1, -1))
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        if rows.shape[0] == 0:
            return x.new_zeros(*shape[:-1], self.out_features)
        if rows.requires_grad and torch.is_grad_enabled():
            out = _Int8Product.apply(rows, self.weight, self.weight_scale, self._dequantized())
        else:
            out = _int8_product(rows, self.weight, self.weight_scale)
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _dequantized(self) -> torch.Tensor:
        """The fp32 weight the int8 one stands for (training only: kept once made, [out, in])."""
        cached: torch.Tensor | None = self.__dict__.get("_dequantized_weight")
        if cached is None:
            cached = self.weight.float() * self.weight_scale.reshape(-1, 1)
            self.__dict__["_dequantized_weight"] = cached
        return cached

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _replace_linears(module: nn.Module) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
            count += 1
        else:
            count += _replace_linears(child)
    return count


@torch.no_grad()
def quantize_model(lm: nn.Module, mode: QuantizeMode, *, lm_head: bool = False) -> int:
    """Quantize the decoder layers' linear layers of a Hugging Face causal LM in place.

    Returns how many layers were replaced. `lm_head=True` also quantizes the output
    projection (an int8 copy; the tied input embedding stays fp32).
    """
    mode = check_mode(mode)
    if mode == "none":
        return 0
    get_decoder = getattr(lm, "get_decoder", None)
    layers = getattr(get_decoder(), "layers", None) if callable(get_decoder) else None
    if layers is None:
        raise QuantizeError(f"{type(lm).__name__} has no decoder layers to quantize")
    device = next(lm.parameters()).device
    if device.type != "cpu":
        raise QuantizeError(f"int8 is the CPU path; the model is on {device} (use bf16 there)")
    count = _replace_linears(layers)
    if lm_head:
        head = lm.get_output_embeddings()  # type: ignore[operator]
        if isinstance(head, nn.Linear):
            lm.set_output_embeddings(Int8Linear(head))  # type: ignore[operator]
            count += 1
    return count


def quantization_of(module: nn.Module) -> QuantizeMode:
    """Which mode a loaded model runs in (read off its layers, so it cannot go stale)."""
    return "int8" if any(isinstance(m, Int8Linear) for m in module.modules()) else "none"
