"""Any local Hugging Face causal-LM folder goes through the same code path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from guardrail.guard import Guard
from guardrail.model.head import HeadConfig, SafetyHead
from guardrail.model.loading import ModelLoadError, load_model
from guardrail.types import DoneEvent, GuardConfig

FAMILIES: dict[str, tuple[str, dict[str, object]]] = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {"sliding_window": None}),
    "mistral-sliding": ("mistral", {"sliding_window": 40}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 8}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_loads_checks_and_generates(family: str, tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model_type, extra = FAMILIES[family]
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, **extra,
    )
    torch.manual_seed(0)
    model_dir, head_dir = tmp_path / family, tmp_path / "head"
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    SafetyHead(HeadConfig(hidden_size=32, num_layers=2, adapter_rank=4, classifier_hidden=8)).save(head_dir)

    guard = Guard(model_dir, head_dir, config=GuardConfig(threshold=1.0))
    assert guard.check_prompt("hello there").label == "safe"
    events = list(guard.generate("hello", max_new_tokens=6))
    assert isinstance(events[-1], DoneEvent) and not events[-1].intercepted
    window = extra.get("sliding_window")
    if window:  # sequences stay within the window, where sliding layers attend fully
        assert guard.model.max_context == window
        session = guard.session("hello")
        for _ in range(12):  # well past the window: the session re-encodes to stay inside it
            assert session.feed(" and then some more words").intercepted is False


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a Hugging Face model folder"):
        load_model(tmp_path / "nowhere")


def test_head_for_another_model_is_rejected(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    SafetyHead(HeadConfig(hidden_size=32, num_layers=2)).save(tmp_path / "h")
    with pytest.raises(ValueError, match="decoder layers"):
        Guard(tmp_path / "m", tmp_path / "h")
