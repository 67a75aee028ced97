"""KV-cache layers for a server that holds many streams for a long time.

Two costs of the stock dynamic cache matter here. It concatenates on every step, so each
step copies a stream's whole past in every layer and frees a block of a new size; with
hundreds of streams growing at once, that is most of the memory traffic and it fragments the
allocator until resident memory creeps up. And batching streams needs their pasts padded
into one tensor per layer. `GrowableLayer` writes new tokens in place into buffers that grow
in fixed blocks; `StreamBatchLayer` builds the padded batch for one layer at a time in a
reused scratch buffer, so a pass allocates (almost) nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

BLOCK_TOKENS = 16  # capacity is a multiple of this
GROWTH = 1.25  # and grows at least this much, so a long stream is copied O(log n) times


def _length(keys: torch.Tensor | None) -> int:
    return 0 if keys is None or keys.dim() != 4 else int(keys.shape[-2])


class GrowableLayer(DynamicLayer):
    """A dynamic cache layer whose keys and values live in buffers grown in place.

    Slack is at most 15 tokens or a quarter of the length: short streams (most moderation
    sessions) waste little, long ones are copied a logarithmic number of times.

    `keys` and `values` stay views of the first `length` positions of the buffers, so
    everything that reads a dynamic layer (cropping included) works unchanged.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return 0 if self._key_buffer is None else int(self._key_buffer.shape[-2])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = _length(self.keys)
        end = length + key_states.shape[-2]
        if not self._fits(key_states, length, end):
            self._grow(key_states, value_states, length, end)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., length:end, :] = key_states
        self._value_buffer[..., length:end, :] = value_states
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    def _fits(self, key_states: torch.Tensor, length: int, end: int) -> bool:
        buffer = self._key_buffer
        if buffer is None or end > buffer.shape[-2] or buffer.shape[:2] != key_states.shape[:2]:
            return False
        if buffer.dtype != key_states.dtype or buffer.device != key_states.device:
            return False
        # keys were replaced by something other than a view of the buffer (a reset, say)
        return length == 0 or (self.keys is not None and self.keys.data_ptr() == buffer.data_ptr())

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, end: int) -> None:
        capacity = _whole_blocks(max(end, int(length * GROWTH)))
        batch, heads, _, key_dim = key_states.shape
        keys = key_states.new_empty((batch, heads, capacity, key_dim))
        values = value_states.new_empty((batch, heads, capacity, value_states.shape[-1]))
        if length:
            assert self.keys is not None and self.values is not None
            keys[..., :length, :] = self.keys
            values[..., :length, :] = self.values
        self._key_buffer, self._value_buffer = keys, values


def new_stream_cache(config: Any) -> DynamicCache:
    """A cache of growable layers, one per decoder layer.

    Sliding-window layers become full ones too: the engine keeps every sequence within the
    narrowest window (`attention_limit`), where the two attend alike, and [CLS] rows must be
    croppable, which a window that has started to slide is not.
    """
    cache = DynamicCache(config=config)
    cache.layers = [GrowableLayer() if type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) else layer
                    for layer in cache.layers]
    return cache


def attention_limit(config: Any) -> int | None:
    """The narrowest sliding window among the model's layers (None if all attend fully)."""
    windows = [int(layer.sliding_window) for layer in DynamicCache(config=config).layers
               if isinstance(layer, DynamicSlidingWindowLayer)]
    return min(windows) if windows else None


def _whole_blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_TOKENS) * BLOCK_TOKENS


def held_tokens(cache: DynamicCache) -> int:
    """Token slots the cache occupies, slack included (every layer grows alike): what its
    memory is accounted by."""
    layer = cache.layers[0] if cache.layers else None
    if isinstance(layer, GrowableLayer):
        return layer.capacity
    return cache.get_seq_length()


@contextlib.contextmanager
def rolled_back_on_error(caches: list[DynamicCache], lengths: list[int]) -> Iterator[None]:
    """A pass that fails leaves every cache as it was, so the pass can be retried."""
    try:
        yield
    except BaseException:
        for cache, length in zip(caches, lengths, strict=True):
            truncate(cache, length)
        raise


def truncate(cache: DynamicCache, length: int) -> None:
    """Cut every layer back to `length` tokens (layers a failed pass already grew, and only those)."""
    layer: Any
    for layer in cache.layers:
        if _length(getattr(layer, "keys", None)) > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def layer_kv(cache: DynamicCache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [B, heads, T, dim] of one layer of a dynamic cache."""
    layer: Any = cache.layers[layer_idx]
    return layer.keys, layer.values


class BatchScratch:
    """Two flat buffers reused by every layer of every batched pass (grown as needed; the
    server releases them when it goes idle, so one wide pass does not pin memory)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def release(self) -> None:
        self._buffers.clear()

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        buffer = self._buffers.get(name)
        fits = buffer is not None and buffer.numel() >= numel
        if buffer is None or not fits or (buffer.dtype, buffer.device) != (like.dtype, like.device):
            buffer = torch.zeros(numel, dtype=like.dtype, device=like.device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)


class StreamBatchLayer(DynamicLayer):
    """One decoder layer's keys and values for a batch of independent streams, built on demand.

    The decoder asks each layer for its keys and values once per pass. Left-padding the
    streams' pasts here, a layer at a time, into scratch shared by all layers keeps one
    layer's padded copy alive instead of every layer's, and each stream's own cache grows by
    its new tokens in the same step. Returned tensors are only valid until the next layer.
    """

    def __init__(self, streams: list[DynamicCache], layer_idx: int, pasts: list[int], news: list[int],
                 big_past: int, scratch: BatchScratch) -> None:
        super().__init__()
        self.streams, self.layer_idx = streams, layer_idx
        self.pasts, self.news, self.big_past = pasts, news, big_past
        self.scratch = scratch
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.big_past

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batch, heads, n_rows, key_dim = key_states.shape
        total = self.big_past + n_rows
        keys = self.scratch.take("keys", (batch, heads, total, key_dim), key_states)
        values = self.scratch.take("values", (batch, heads, total, value_states.shape[-1]), value_states)
        for b, (cache, past) in enumerate(zip(self.streams, self.pasts, strict=True)):
            pad = self.big_past - past
            if pad:  # masked out, but must hold finite numbers: 0 * garbage could be NaN
                keys[b, :, :pad].zero_()
                values[b, :, :pad].zero_()
            if past:
                own_keys, own_values = layer_kv(cache, self.layer_idx)
                keys[b, :, pad : self.big_past] = own_keys[0]
                values[b, :, pad : self.big_past] = own_values[0]
        keys[:, :, self.big_past :] = key_states
        values[:, :, self.big_past :] = value_states
        for b, (cache, new) in enumerate(zip(self.streams, self.news, strict=True)):
            if new:  # the stream's real new tokens only: not its padding, not the [CLS] row
                cache.update(key_states[b : b + 1, :, :new], value_states[b : b + 1, :, :new], self.layer_idx)
        return keys, values
