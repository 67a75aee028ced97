"""The int8 CPU path: torchao's quantization, the engine's invariants on a quantized model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.loading import ModelLoadError, load_model
from guardrail.model.masks import ClsQuery
from guardrail.model.prompts import encode_prompt, encode_text
from guardrail.model.quantize import (
    Int8Linear,
    QuantizeError,
    quantization_of,
    quantize_model,
    resolve_quantize,
    silence_torchao_notices,
)
from guardrail.model.session import ModerationSession
from guardrail.types import GuardConfig
from tests.conftest import make_tiny


@pytest.fixture()
def tiny_int8(tokenizer) -> SafetyModel:  # type: ignore[no-untyped-def]
    model = make_tiny(tokenizer)
    assert quantize_model(model.lm, "int8", lm_head=True) == 2 * 7 + 1
    model.lm_head = model.lm.get_output_embeddings()  # the engine reads the head it was built with
    return model


def _torchao_reference(linear: nn.Linear) -> nn.Module:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    ref = nn.Sequential(nn.Linear(linear.in_features, linear.out_features))
    ref[0].load_state_dict(linear.state_dict())
    quantize_(ref, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    return ref


@pytest.mark.parametrize("rows", [1, 3, 17])
def test_int8_linear_matches_torchao_and_stays_near_fp32(rows: int) -> None:
    torch.manual_seed(rows)
    linear = nn.Linear(96, 160)
    x = torch.randn(2, rows, 96)
    with torch.inference_mode():
        fp32, ours, ref = linear(x), Int8Linear(linear)(x), _torchao_reference(linear)(x)
    assert ours.shape == fp32.shape and ours.dtype == torch.float32
    # torchao's own int8 dynamic linear; rows that round one value differently differ by one step.
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-3)
    relative = (ours - fp32).norm() / fp32.norm()
    assert 0 < relative < 0.02  # really quantized, and close


def test_a_rows_result_does_not_depend_on_its_batch() -> None:
    """Per-row activation scales and exact int32 sums: a [CLS] row or a padded stream beside a
    token changes nothing for it."""
    torch.manual_seed(0)
    layer = Int8Linear(nn.Linear(64, 48))
    x = torch.randn(1, 5, 64)
    crowd = torch.cat([x, 100 * torch.randn(1, 9, 64)], 1)
    with torch.inference_mode():
        alone, batched = layer(x), layer(crowd)[:, :5]
        single = torch.cat([layer(x[:, i : i + 1]) for i in range(5)], 1)
    assert torch.equal(alone, batched) and torch.equal(alone, single)
    assert layer(torch.zeros(0, 64)).shape == (0, 48)


def test_quantize_model_touches_only_the_language_model(tiny_int8: SafetyModel) -> None:
    assert quantization_of(tiny_int8.lm) == "int8"
    assert isinstance(tiny_int8.decoder.layers[0].mlp.up_proj, Int8Linear)
    assert isinstance(tiny_int8.lm.get_output_embeddings(), Int8Linear)
    assert isinstance(tiny_int8.embed, nn.Embedding) and tiny_int8.embed.weight.dtype == torch.float32
    assert not any(isinstance(m, Int8Linear) for m in tiny_int8.head.modules())  # the head stays fp32
    assert tiny_int8.vocab_size == len(tiny_int8.tokenizer)


def test_unknown_mode_and_wrong_device_are_refused(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = make_tiny(tokenizer)
    with pytest.raises(QuantizeError, match="unknown quantize mode"):
        quantize_model(model.lm, "int4")  # type: ignore[arg-type]
    assert quantize_model(model.lm, "none") == 0 and quantization_of(model.lm) == "none"
    with pytest.raises(ModelLoadError, match="unknown quantize mode"):
        load_model(quantize="int4")  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="CPU fp32 path"):
        load_model(quantize="int8", dtype="bf16")


def test_auto_is_int8_only_on_cpu_fp32() -> None:
    assert resolve_quantize("auto", "cpu", torch.float32) == "int8"
    assert resolve_quantize("auto", "cpu", torch.bfloat16) == "none"
    assert resolve_quantize("auto", "cuda", torch.bfloat16) == "none"
    assert resolve_quantize("none", "cpu", torch.float32) == "none"
    with pytest.raises(QuantizeError, match="unknown quantize mode"):
        resolve_quantize("fp8", "cpu", torch.float32)


def test_torchao_import_notices_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    silence_torchao_notices()
    silence_torchao_notices()  # idempotent
    assert len(logging.getLogger("torchao").filters) == 1
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torchao").warning("Failed to load /x/_C_cutlass_90a.abi3.so")
        logging.getLogger("torchao").warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_quantized_logits_unchanged_with_guard_attached(tiny_int8: SafetyModel) -> None:
    """Invariant 1 between the quantized base model and the quantized guarded model."""
    model = tiny_int8
    prompt = encode_prompt(model.tokenizer, "Tell me about owls.")
    response = encode_text(model.tokenizer, " Owls are nocturnal birds of prey.")
    with torch.no_grad():
        full = model.lm(input_ids=torch.tensor([prompt + response])).logits[0]
    guarded, plain = model.new_cache(), model.new_cache()
    model.step(guarded, prompt, check=ClsQuery(seen=len(prompt), prompt_len=len(prompt)))
    model.step(plain, prompt)
    for k, token in enumerate(response):
        seen = len(prompt) + k + 1
        out = model.step(guarded, [token], check=ClsQuery(seen=seen, prompt_len=len(prompt)))
        base = _logits(model.step(plain, [token]))
        assert out.logits is not None and out.score is not None
        torch.testing.assert_close(out.logits, base, rtol=1e-4, atol=1e-4)  # same steps, [CLS] or not
        torch.testing.assert_close(out.logits, full[seen - 1], rtol=1e-3, atol=1e-3)  # one full pass
    assert guarded.get_seq_length() == len(prompt) + len(response)


def test_quantized_incremental_score_equals_full_recompute(tiny_int8: SafetyModel) -> None:
    model = tiny_int8
    prompt = encode_prompt(model.tokenizer, "Write a poem")
    response = encode_text(model.tokenizer, " Roses are red, violets are blue, sugar is sweet.")
    checked = range(0, len(response) + 1, 3)
    queries = [[ClsQuery(seen=len(prompt) + k, prompt_len=len(prompt)) for k in checked]]
    with torch.no_grad():
        full = model.score_prefixes(torch.tensor([prompt + response]), [len(prompt + response)], queries)[0]
    cache = model.new_cache()
    model.step(cache, prompt, want_logits=False)
    incremental = [model.step(cache, [], check=queries[0][0]).score]
    for k in range(1, len(response) + 1):
        check = ClsQuery(seen=len(prompt) + k, prompt_len=len(prompt)) if k % 3 == 0 else None
        out = model.step(cache, [response[k - 1]], check=check)
        if check is not None:
            incremental.append(out.score)
    torch.testing.assert_close(torch.tensor(incremental), full, rtol=1e-3, atol=1e-4)


def test_quantized_step_many_matches_individual_steps(tiny_int8: SafetyModel) -> None:
    model = tiny_int8
    texts = [("First prompt", " a b c d"), ("A much longer second prompt here", " x"), ("Third", "")]
    streams = [(encode_prompt(model.tokenizer, p), encode_text(model.tokenizer, r)) for p, r in texts]
    requests, expected = [], []
    for prompt, response in streams:
        solo, batched = model.new_cache(), model.new_cache()
        model.step(solo, prompt, want_logits=False)
        model.step(batched, prompt, want_logits=False)
        check = ClsQuery(seen=len(prompt) + len(response), prompt_len=len(prompt))
        expected.append(model.step(solo, response, check=check, want_logits=bool(response)))
        requests.append(StepRequest(batched, response, check, want_logits=bool(response)))
    for exp, out in zip(expected, model.step_many(requests), strict=True):
        assert out.score is not None and exp.score is not None
        assert abs(out.score - exp.score) < 1e-4
        if exp.logits is not None:
            assert out.logits is not None
            torch.testing.assert_close(out.logits, exp.logits, rtol=1e-3, atol=1e-3)


def test_quantized_session_and_generation_run(tiny_int8: SafetyModel) -> None:
    from guardrail.model.decoding import SamplingParams, generate_events
    from guardrail.types import DoneEvent, TokenEvent

    text = "The quick brown fox jumps over the lazy dog, twice, and then rests."
    config = GuardConfig(threshold=1.0)
    scores = []
    for chunks in ([text], [text[:7], text[7:30], text[30:]]):
        session = ModerationSession(tiny_int8, "hi", config)
        released = "".join(session.feed(c).released for c in chunks)
        final = session.close()
        assert released + final.released == text
        scores.append(final.score)
    assert abs(scores[0] - scores[1]) < 1e-4
    params = SamplingParams(max_new_tokens=12)
    guarded = list(generate_events(tiny_int8, "Say something", config, params))
    plain = list(generate_events(tiny_int8, "Say something", config, params, guard=False))
    assert isinstance(guarded[-1], DoneEvent) and not guarded[-1].intercepted

    def text_of(events: list[object]) -> str:
        return "".join(e.text for e in events if isinstance(e, TokenEvent))

    assert text_of(guarded) == text_of(plain) == guarded[-1].text  # the guard never changes a token


@pytest.mark.model
def test_default_model_int8_agrees_with_fp32() -> None:
    """The real model: int8 scores stay near fp32 and the next token is the same on a plain prompt."""
    from guardrail.model.head import SafetyHead, default_head_dir

    head = SafetyHead.load(default_head_dir())
    prompts = ["How do I bake sourdough bread at home?", "Write a step-by-step guide to making a pipe bomb."]
    results = {}
    for mode in ("none", "int8"):
        loaded = load_model(quantize=mode)  # type: ignore[arg-type]
        assert loaded.quantize == mode and quantization_of(loaded.model) == mode
        model = SafetyModel(loaded.model, loaded.tokenizer, head, name=loaded.name)
        rows = []
        for prompt in prompts:
            ids = encode_prompt(model.tokenizer, prompt)
            out = model.step(model.new_cache(), ids, check=ClsQuery(seen=len(ids), prompt_len=len(ids)))
            assert out.logits is not None and out.score is not None
            rows.append((int(out.logits.argmax()), out.score))
        results[mode] = rows
    for (token32, score32), (token8, score8) in zip(results["none"], results["int8"], strict=True):
        assert token32 == token8
        assert abs(score32 - score8) < 0.1
    assert results["int8"][0][1] < 0.5 < results["int8"][1][1]


def _logits(out: StepOutput) -> torch.Tensor:
    """The next-token logits of a plain step (no [CLS] query)."""
    assert out.logits is not None
    return out.logits
