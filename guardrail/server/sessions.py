"""The session store: idle TTL, a bound on count and on KV-cache memory, LRU eviction.

Sessions that expired or were evicted leave a small tombstone, so a late chunk gets 410
(gone, with the reason) rather than 404 (never existed, or deleted by the caller).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from guardrail.model.engine import SafetyModel
from guardrail.server.errors import APIError
from guardrail.server.metrics import Metrics
from guardrail.server.moderation import SteppedSession

TOMBSTONES = 10_000


def kv_bytes_per_token(model: SafetyModel) -> int:
    """Keys and values of one token across all layers, from the model's config."""
    cfg = model.lm.config
    layers = int(getattr(cfg, "num_hidden_layers", 1))
    heads = int(getattr(cfg, "num_attention_heads", 1))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return 2 * layers * kv_heads * head_dim * model.dtype.itemsize


@dataclass
class SessionEntry:
    id: str
    session: SteppedSession
    created: float
    last_used: float
    chunks: int = 0
    info: dict[str, str] = field(default_factory=dict)


class SessionStore:
    def __init__(self, *, max_sessions: int, ttl_s: float, max_bytes: int, bytes_per_token: int,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic,
                 id_prefix: str = "sess_") -> None:
        self.max_sessions = max_sessions
        self.id_prefix = id_prefix  # scale-out names the owning replica here, for routing
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.bytes_per_token = bytes_per_token
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._entries: OrderedDict[str, SessionEntry] = OrderedDict()
        self._tombstones: OrderedDict[str, str] = OrderedDict()
        self.metrics.active_sessions._read = lambda: len(self._entries)
        self.metrics.session_memory._read = self.memory_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def memory_bytes(self) -> int:
        return sum(e.session.cached_tokens for e in self._entries.values()) * self.bytes_per_token

    def add(self, session: SteppedSession) -> SessionEntry:
        """Register a session, evicting the least recently used ones to stay in bounds."""
        self.sweep()
        while len(self._entries) >= self.max_sessions and self._evict_one("evicted: too many sessions"):
            pass
        now = self.clock()
        entry = SessionEntry(id=self.id_prefix + secrets.token_urlsafe(16), session=session, created=now,
                             last_used=now)
        self._entries[entry.id] = entry
        self.enforce_memory(keep=entry.id)
        return entry

    def get(self, session_id: str) -> SessionEntry:
        """Look up and touch a session; 404 if unknown, 410 if it expired or was evicted."""
        entry = self._entries.get(session_id)
        if entry is not None and self.clock() - entry.last_used > self.ttl_s:
            self._drop(session_id, "expired: idle longer than the session TTL")
            entry = None
        if entry is None:
            reason = self._tombstones.get(session_id)
            if reason is not None:
                raise APIError(410, f"session {session_id} is gone ({reason})", code="session_gone")
            raise APIError(404, f"session {session_id} not found", code="session_not_found")
        entry.last_used = self.clock()
        self._entries.move_to_end(session_id)
        return entry

    def remove(self, session_id: str) -> bool:
        """Delete by request: frees the KV cache; a second delete finds nothing (404)."""
        entry = self._entries.pop(session_id, None)
        return entry is not None

    def sweep(self) -> int:
        """Drop sessions idle past the TTL; returns how many."""
        now = self.clock()
        stale = [sid for sid, e in self._entries.items() if now - e.last_used > self.ttl_s]
        for sid in stale:
            self._drop(sid, "expired: idle longer than the session TTL")
        return len(stale)

    def enforce_memory(self, keep: str | None = None) -> None:
        """Evict least recently used sessions while all KV caches exceed the memory bound."""
        while self.memory_bytes() > self.max_bytes and self._evict_one("evicted: memory bound", keep=keep):
            pass

    def _evict_one(self, reason: str, keep: str | None = None) -> bool:
        for sid, entry in self._entries.items():  # oldest first
            if sid != keep and not entry.session.lock.locked():
                self._drop(sid, reason)
                self.metrics.sessions_evicted.inc(reason=reason.split(":")[0])
                return True
        return False

    def _drop(self, session_id: str, reason: str) -> None:
        if self._entries.pop(session_id, None) is None:
            return
        self._tombstones[session_id] = reason
        while len(self._tombstones) > TOMBSTONES:
            self._tombstones.popitem(last=False)
        if reason.startswith("expired"):
            self.metrics.sessions_evicted.inc(reason="expired")
