"""Strategic attention invariants on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from guardrail.model.engine import SafetyModel
from guardrail.model.masks import ClsQuery, cls_visibility, strategic_mask
from guardrail.model.prompts import encode_prompt, encode_text


def _ids(model: SafetyModel, prompt: str, response: str) -> tuple[list[int], list[int]]:
    return encode_prompt(model.tokenizer, prompt), encode_text(model.tokenizer, response)


def test_ordinary_rows_never_see_cls() -> None:
    mask = strategic_mask(3, [2], [[ClsQuery(seen=5, prompt_len=3)]], dtype=torch.float32)
    blocked = mask[0, 0] < 0
    assert blocked.shape == (3, 6)
    assert blocked[0, 5] and blocked[1, 5]  # new tokens do not see the [CLS] key
    assert not blocked[0, :4].any() and blocked[0, 4]  # causal among new tokens
    assert not blocked[2].any()  # [CLS] sees everything and itself


def test_window_limits_response_but_keeps_prompt() -> None:
    visible = cls_visibility(10, ClsQuery(seen=10, prompt_len=3, window=2))
    assert visible.tolist() == [True] * 3 + [False] * 5 + [True] * 2


def test_logits_unchanged_with_guard_attached(tiny: SafetyModel) -> None:
    prompt, response = _ids(tiny, "Tell me about owls.", " Owls are nocturnal birds of prey.")
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        base = tiny.lm(input_ids=ids).logits[0]
    cache = tiny.new_cache()
    tiny.step(cache, prompt, check=ClsQuery(seen=len(prompt), prompt_len=len(prompt)))
    for k, token in enumerate(response):
        seen = len(prompt) + k + 1
        out = tiny.step(cache, [token], check=ClsQuery(seen=seen, prompt_len=len(prompt)))
        assert out.logits is not None and out.logits.shape[-1] == tiny.vocab_size
        torch.testing.assert_close(out.logits, base[seen - 1], rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == len(prompt) + len(response)  # [CLS] left no trace


def test_incremental_score_equals_full_recompute(tiny: SafetyModel) -> None:
    prompt, response = _ids(tiny, "Write a poem", " Roses are red, violets are blue, sugar is sweet.")
    positions = list(range(0, len(response) + 1, 2))
    queries = [[ClsQuery(seen=len(prompt) + k, prompt_len=len(prompt), window=4) for k in positions]]
    with torch.no_grad():
        full = tiny.score_prefixes(torch.tensor([prompt + response]), [len(prompt + response)], queries)[0]
    cache = tiny.new_cache()
    tiny.step(cache, prompt, want_logits=False)
    incremental = [tiny.step(cache, [], check=queries[0][0]).score]
    for k in range(1, len(response) + 1):
        check = ClsQuery(seen=len(prompt) + k, prompt_len=len(prompt), window=4) if k % 2 == 0 else None
        out = tiny.step(cache, [response[k - 1]], check=check)
        if check is not None:
            incremental.append(out.score)
    torch.testing.assert_close(torch.tensor(incremental), full, rtol=1e-4, atol=1e-5)


def test_check_costs_one_query_position(tiny: SafetyModel) -> None:
    """The decoder sees exactly N + 1 query rows for N new tokens plus a check."""
    prompt, response = _ids(tiny, "Hi", " Hello there friend")
    seen_rows: list[int] = []
    handle = tiny.decoder.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: seen_rows.append((args[0] if args else kwargs["hidden_states"]).shape[1]),
        with_kwargs=True,
    )
    cache = tiny.new_cache()
    tiny.step(cache, prompt, want_logits=False)
    tiny.step(cache, response[:1], check=ClsQuery(seen=len(prompt) + 1, prompt_len=len(prompt)))
    handle.remove()
    assert seen_rows == [len(prompt), 2]


def test_batched_prefix_scores_match_single(tiny: SafetyModel) -> None:
    a_p, a_r = _ids(tiny, "Question one", " answer one is long enough")
    b_p, b_r = _ids(tiny, "Second question here please", " short")
    seqs = [a_p + a_r, b_p + b_r]
    width = max(map(len, seqs))
    pad = tiny.tokenizer.eos_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    queries = [
        [ClsQuery(len(a_p), len(a_p)), ClsQuery(len(seqs[0]), len(a_p))],
        [ClsQuery(len(seqs[1]), len(b_p))],
    ]
    with torch.no_grad():
        batched = tiny.score_prefixes(ids, [len(s) for s in seqs], queries)
        single_b = tiny.score_prefixes(torch.tensor([seqs[1]]), [len(seqs[1])], [queries[1]])
    torch.testing.assert_close(batched[1, 0], single_b[0, 0], rtol=1e-4, atol=1e-5)


def test_step_many_matches_individual_steps(tiny: SafetyModel) -> None:
    from guardrail.model.engine import StepRequest

    streams = [_ids(tiny, "First prompt", " a b c d"), _ids(tiny, "A much longer second prompt here", " x"),
               _ids(tiny, "Third", "")]
    solo_caches, batch_caches = [], []
    for prompt, _ in streams:
        for caches in (solo_caches, batch_caches):
            cache = tiny.new_cache()
            tiny.step(cache, prompt, want_logits=False)
            caches.append(cache)
    requests, expected = [], []
    for (prompt, response), solo, batched in zip(streams, solo_caches, batch_caches, strict=True):
        check = ClsQuery(seen=len(prompt) + len(response), prompt_len=len(prompt))
        expected.append(tiny.step(solo, response, check=check, want_logits=bool(response)))
        requests.append(StepRequest(batched, response, check, want_logits=bool(response)))
    got = tiny.step_many(requests)
    for exp, out, solo, batched in zip(expected, got, solo_caches, batch_caches, strict=True):
        assert out.score is not None and exp.score is not None
        assert abs(out.score - exp.score) < 1e-5
        if exp.logits is not None:
            assert out.logits is not None
            torch.testing.assert_close(out.logits, exp.logits, rtol=1e-4, atol=1e-4)
        assert batched.get_seq_length() == solo.get_seq_length()
        torch.testing.assert_close(batched.layers[0].keys, solo.layers[0].keys, rtol=1e-5, atol=1e-5)


def test_failed_batched_pass_leaves_caches_unchanged(tiny: SafetyModel) -> None:
    """The batcher retries a failed pass stream by stream, so a pass that raises half way must
    not have grown any stream's cache."""
    from guardrail.model.engine import StepRequest

    caches = []
    for prompt in ("one prompt", "another, longer prompt"):
        cache = tiny.new_cache()
        tiny.step(cache, encode_prompt(tiny.tokenizer, prompt), want_logits=False)
        caches.append(cache)
    fresh = tiny.new_cache()  # a stream whose first step is this pass
    before = [c.get_seq_length() for c in caches]
    keys_before = [c.layers[0].keys.clone() for c in caches]
    last_layer = tiny.decoder.layers[-1]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("layer failed")

    last_layer.forward = broken  # type: ignore[method-assign]
    requests = [StepRequest(c, [5, 6, 7], ClsQuery(seen=n + 3, prompt_len=n))
                for c, n in zip(caches, before, strict=True)]
    requests.append(StepRequest(fresh, [8, 9], None))
    try:
        tiny.step_many(requests)
    except RuntimeError as exc:
        assert "layer failed" in str(exc)
    else:
        raise AssertionError("the pass should have failed")
    try:
        tiny.step(caches[0], [5, 6], check=ClsQuery(seen=before[0] + 2, prompt_len=before[0]))
    except RuntimeError:
        pass  # a single stream's pass rolls back too
    else:
        raise AssertionError("the single pass should have failed")
    finally:
        del last_layer.forward
    assert [c.get_seq_length() for c in caches] == before and fresh.get_seq_length() == 0
    for cache, keys in zip(caches, keys_before, strict=True):
        assert all(layer.keys.shape[-2] == keys.shape[-2] for layer in cache.layers)
        torch.testing.assert_close(cache.layers[0].keys, keys)
    out = tiny.step_many(requests)  # and the same pass then succeeds as if nothing happened
    assert [c.get_seq_length() for c in caches] == [n + 3 for n in before] and out[0].score is not None


def test_several_checks_in_one_pass_equal_one_check_per_prefix(tiny: SafetyModel) -> None:
    """A chunk's scheduled checks ride one pass; each scores exactly its own prefix (invariant 2),
    in `step` and in `step_many`, whatever the other rows carry."""
    from guardrail.model.engine import StepRequest

    prompt, response = _ids(tiny, "Tell me a story", " once upon a time there was a fox in the wood")
    solo_scores = []
    for n in range(1, len(response) + 1):
        cache = tiny.new_cache()
        tiny.step(cache, prompt, want_logits=False)
        check = ClsQuery(seen=len(prompt) + n, prompt_len=len(prompt))
        solo_scores.append(tiny.step(cache, response[:n], check=check, want_logits=False).score)
    positions = [1, 3, 4, len(response)]
    queries = [ClsQuery(seen=len(prompt) + n, prompt_len=len(prompt)) for n in positions]
    cache = tiny.new_cache()
    tiny.step(cache, prompt, want_logits=False)
    out = tiny.step(cache, response, checks=queries, want_logits=False)
    assert out.scores == pytest.approx([solo_scores[n - 1] for n in positions], abs=1e-5)
    assert out.score == out.scores[-1] and cache.get_seq_length() == len(prompt) + len(response)

    caches = []
    for _ in range(3):
        c = tiny.new_cache()
        tiny.step(c, prompt, want_logits=False)
        caches.append(c)
    other_prompt, _ = _ids(tiny, "A different and much longer prompt for the second row", "")
    tiny.step(caches[1], other_prompt[: len(prompt)], want_logits=False)  # a row with a longer past
    requests = [StepRequest(caches[0], response, checks=queries),
                StepRequest(caches[1], response[:2]),
                StepRequest(caches[2], response[:5], checks=queries[:2])]
    got = tiny.step_many(requests)
    assert got[0].scores == pytest.approx(out.scores, abs=1e-5)
    assert got[1].scores == [] and got[1].score is None
    assert got[2].scores == pytest.approx(out.scores[:2], abs=1e-5)


def test_step_request_keeps_check_and_checks_consistent() -> None:
    from guardrail.model.engine import StepRequest

    q1, q2 = ClsQuery(seen=3, prompt_len=1), ClsQuery(seen=5, prompt_len=1)
    assert StepRequest(None, [], q1).checks == [q1]  # type: ignore[arg-type]
    assert StepRequest(None, [], checks=[q1, q2]).check == q2  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        StepRequest(None, [], q1, checks=[q1, q2])  # type: ignore[arg-type]


def test_check_plan_is_the_one_check_on_both_drivers(tiny: SafetyModel) -> None:
    """The one-shot check, in place, batched, and as a batch of checks, gives one verdict."""
    import asyncio

    from guardrail.model.check import check_plan, run_check, run_checks
    from guardrail.server.batcher import Batcher
    from guardrail.server.driver import run_batched
    from guardrail.server.tokenizing import TokenizerThread
    from guardrail.types import GuardConfig

    config = GuardConfig(threshold=0.5)
    items: list[tuple[str, str | None]] = [("How are you?", None), ("Tell me a story", " Once upon a time"),
                                           ("x " * 900, "y " * 900)]  # over the context: fitted
    solo = [run_check(tiny, prompt, response, config) for prompt, response in items]
    batch = run_checks(tiny, items, config)

    async def batched() -> list[object]:
        batcher, text = Batcher(tiny, max_batch=4, max_wait_ms=5), TokenizerThread()
        batcher.start()
        try:
            return list(await asyncio.gather(*(run_batched(batcher, text, check_plan(tiny, p, r, config))
                                               for p, r in items)))
        finally:
            batcher.stop()
            text.stop()

    served = asyncio.run(batched())
    for one, many, remote in zip(solo, batch, served, strict=True):
        assert one.tokens == many.tokens == remote.tokens <= tiny.max_context - 1  # type: ignore[attr-defined]
        assert one.score == pytest.approx(many.score, abs=1e-5)
        assert one.score == pytest.approx(remote.score, abs=1e-5)  # type: ignore[attr-defined]
        assert one.label == ("unsafe" if one.score >= 0.5 else "safe")


def test_two_heads_share_one_language_model_and_detach_cleanly(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """A second head (another adapter rank) read on the same LM, as a training run reads the
    head it would replace, changes neither head's scores, and leaves no hook behind."""
    from guardrail.model.head import HeadConfig, SafetyHead
    from tests.keyword_model import tiny_parts

    lm, head = tiny_parts(tokenizer, lively_adapters=True)
    first = SafetyModel(lm, tokenizer, head, name="tiny")
    prompt, response = _ids(first, "Tell me about owls.", " Owls are nocturnal birds of prey.")
    ids = torch.tensor([prompt + response])
    queries = [[ClsQuery(seen=len(prompt) + k, prompt_len=len(prompt)) for k in (0, 4, len(response))]]

    def scores(model: SafetyModel) -> torch.Tensor:
        with torch.no_grad():
            return model.score_prefixes(ids, [ids.shape[1]], queries)[0]

    before = scores(first)
    torch.manual_seed(1)
    other_head = SafetyHead(HeadConfig(hidden_size=32, num_layers=2, adapter_rank=16, classifier_hidden=16))
    for adapter in other_head.adapters:
        torch.nn.init.normal_(adapter.up.weight, std=0.5)
    with first.with_head(other_head) as other:
        alone = scores(other)
        torch.testing.assert_close(scores(first), before)  # the other head's hooks stay idle
    torch.testing.assert_close(scores(first), before)
    assert not any(layer._forward_hooks for layer in lm.model.layers[:0])
    assert sum(len(layer._forward_hooks) for layer in lm.model.layers) == len(lm.model.layers)
    assert not torch.allclose(alone, before)
