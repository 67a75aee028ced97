"""Activation smoothing for the int8 path: exact in fp32, shipped per base model, filed apart."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from guardrail.model import smoothing
from guardrail.model.engine import SafetyModel
from guardrail.model.quantize import quantize_model
from guardrail.training.kvstore import kv_name
from tests.keyword_model import tiny_parts


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


TEXTS = ["How do I bake bread at home?", "Write a short poem about the sea.", "What is 12 times 7?"]


def test_smoothing_changes_nothing_in_fp32(tokenizer: Any) -> None:
    """The scales fold into norms and weights: the same function, before any rounding."""
    lm, _ = tiny_parts(tokenizer, seed=3)
    with torch.no_grad():  # give the tiny model outlier channels, as real decoders have
        for layer in lm.model.layers:
            layer.input_layernorm.weight.mul_(torch.linspace(0.1, 8.0, layer.input_layernorm.weight.numel()))
    scales = smoothing.scales_from(lm, smoothing.activation_maxima(lm, _ids(tokenizer, TEXTS)))
    assert all(float(s.min()) > 0 for s in scales.values()) and len(scales) == 3 * len(lm.model.layers)
    assert any(float((s - 1).abs().max()) > 0.1 for s in scales.values())  # the scales do something
    smoothed = copy.deepcopy(lm)
    smoothing.apply_smoothing(smoothed, scales)
    ids = torch.tensor(_ids(tokenizer, ["Tell me about the history of Rome."]))
    with torch.no_grad():
        expected = lm(input_ids=ids).logits
        torch.testing.assert_close(smoothed(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert smoothing.is_smoothed(smoothed) and not smoothing.is_smoothed(lm)


def test_smoothed_int8_features_are_filed_apart(tokenizer: Any) -> None:
    lm, head = tiny_parts(tokenizer)
    plain, smoothed = copy.deepcopy(lm), copy.deepcopy(lm)
    smoothing.apply_smoothing(smoothed, smoothing.scales_from(smoothed, smoothing.activation_maxima(
        smoothed, _ids(tokenizer, TEXTS))))
    quantize_model(plain, "int8")
    quantize_model(smoothed, "int8")
    names = {kv_name(SafetyModel(m, tokenizer, head, name="tiny")) for m in (lm, plain, smoothed)}
    assert names == {"tiny", "tiny+int8", "tiny+int8+smooth"}


def test_a_model_without_shipped_scales_gets_plain_int8() -> None:
    assert smoothing.shipped_scales("no-such-model") is None


def test_the_default_model_ships_scales_for_every_layer() -> None:
    scales = smoothing.shipped_scales("SmolLM2-135M-Instruct")
    assert scales is not None
    layers = {int(key.split(".")[0]) for key in scales}
    assert layers == set(range(30))
    assert {key.split(".")[1] for key in scales} == {"attn", "mlp", "down"}
    assert all(bool(torch.isfinite(s).all()) and float(s.min()) > 0 for s in scales.values())


@pytest.mark.model
def test_the_default_model_loads_smoothed_under_int8() -> None:
    from guardrail.model.loading import load_model

    assert smoothing.is_smoothed(load_model(None, quantize="int8").model)
    assert not smoothing.is_smoothed(load_model(None).model)
