"""The growable cache layer behaves like the stock dynamic layer, across block boundaries."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from guardrail.model.kvcache import BLOCK_TOKENS, GROWTH, GrowableLayer, truncate


def test_growable_layer_matches_dynamic_layer_through_growth_and_crops() -> None:
    torch.manual_seed(0)
    growable, stock = GrowableLayer(), DynamicLayer()
    buffers = set()
    for step, n in enumerate([3, 1, BLOCK_TOKENS, 7, 1, 2 * BLOCK_TOKENS, 5]):
        keys, values = torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4)
        got = growable.update(keys, values)
        want = stock.update(keys, values)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
        assert growable.get_seq_length() == stock.get_seq_length()
        assert growable._key_buffer is not None
        capacity, length = growable._key_buffer.shape[-2], growable.get_seq_length()
        assert capacity % BLOCK_TOKENS == 0
        assert capacity - length < max(BLOCK_TOKENS, length * (GROWTH - 1) + BLOCK_TOKENS)
        buffers.add(growable._key_buffer.data_ptr())
        if step == 3:  # crop, then keep writing into the same buffer
            growable.crop(-4)
            stock.crop(-4)
    assert len(buffers) < 7  # small steps wrote in place instead of reallocating


def test_truncate_and_reset_rebuild_consistently() -> None:
    layer = GrowableLayer()
    first = torch.randn(1, 2, 10, 4)
    layer.update(first, first)
    truncate(Cache(layers=[layer]), 6)  # type: ignore[arg-type]
    assert layer.get_seq_length() == 6
    more = torch.randn(1, 2, 3, 4)
    keys, _ = layer.update(more, more)
    torch.testing.assert_close(keys, torch.cat([first[..., :6, :], more], dim=-2))
    layer.reset()
    keys, _ = layer.update(more, more)
    torch.testing.assert_close(keys, more)


def test_a_long_stream_is_reallocated_a_logarithmic_number_of_times() -> None:
    layer = GrowableLayer()
    buffers = set()
    for _ in range(2000):
        token = torch.randn(1, 1, 1, 2)
        layer.update(token, token)
        assert layer._key_buffer is not None
        buffers.add(layer._key_buffer.data_ptr())
    assert layer.get_seq_length() == 2000
    assert len(buffers) <= 25  # 16 -> 2000 growing by >= 1.25x: about 22 buffers, not 125


def test_held_tokens_count_the_room_to_grow() -> None:
    from transformers import LlamaConfig

    from guardrail.model.kvcache import held_tokens, new_stream_cache

    config = LlamaConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    cache = new_stream_cache(config)
    assert held_tokens(cache) == 0
    for layer_idx in range(2):
        states = torch.randn(1, 1, 20, 4)
        cache.update(states, states, layer_idx)
    assert cache.get_seq_length() == 20
    assert held_tokens(cache) == 32  # two blocks: memory is accounted by what is allocated
