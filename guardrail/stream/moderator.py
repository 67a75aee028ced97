"""`StreamModerator`: one moderation session driven chunk by chunk, sync or async.

The steps (coalescing deltas, applying a verdict, deciding what a close must feed) are written
once; the sync and async methods differ only in how they call the session.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Callable

from guardrail.errors import GuardrailViolation, Stage
from guardrail.protocols import AsyncSessionProtocol, SessionProtocol
from guardrail.stream.bridge import (
    AnyGuard,
    AnySession,
    as_async,
    as_async_session,
    require_sync,
    require_sync_session,
)
from guardrail.stream.default import aresolve_guard, resolve_guard
from guardrail.types import ChunkVerdict, GuardConfig, PromptInput, Verdict, categories_fired, label_for

VerdictHook = Callable[[str, Verdict | ChunkVerdict], None]
"""Called with a stage ("input", "output", "stream") and each verdict, e.g. to log or count."""


def judge(verdict: Verdict, config: GuardConfig | None) -> Verdict:
    """Re-judge a verdict under the caller's own threshold and category rules.

    `check_prompt` and `check_response` judge with the guard's config; the scores are the same
    either way, so a per-call config only changes the labels. Fields the caller's config does
    not name keep the guard's judgement (its calibrated threshold, its category rules); a
    category the caller names is judged by the caller's rule, at the rule's threshold or the
    head's (`Verdict.category_thresholds`). The rules are the ones every surface uses.
    """
    if config is None:
        return verdict
    named = {name: rule for name, rule in config.categories.items() if name in verdict.categories}
    threshold = config.threshold if "threshold" in config.model_fields_set else verdict.threshold
    if threshold == verdict.threshold and not named:
        return verdict
    fired = categories_fired({n: verdict.categories[n] for n in named}, verdict.category_thresholds, named)
    flagged = [n for n in verdict.categories
               if (n in fired.flagged) or (n not in named and n in verdict.flagged_categories)]
    blocked = [n for n in verdict.categories
               if (n in fired.blocked) or (n not in named and n in verdict.blocked_categories)]
    label = "unsafe" if blocked else label_for(verdict.score, threshold)
    return verdict.model_copy(update={"label": label, "threshold": threshold,
                                      "flagged_categories": flagged, "blocked_categories": blocked})


def violation_message(verdict: Verdict | ChunkVerdict, stage: Stage) -> str:
    """What a `GuardrailViolation` says: the stage, the score against the threshold, and the
    categories that fired (those that block marked), so a log line names the harm."""
    message = f"guardrail flagged the {stage} (score {verdict.score:.3f}, threshold {verdict.threshold:.3f}"
    if verdict.flagged_categories:
        blocked = set(verdict.blocked_categories)
        names = [f"{name} (block)" if name in blocked else name for name in verdict.flagged_categories]
        message += "; categories: " + ", ".join(names)
    return message + ")"


def violation(verdict: Verdict | ChunkVerdict, stage: Stage, released: str = "") -> GuardrailViolation:
    """The exception every guarded surface raises: its verdict and message name the categories."""
    return GuardrailViolation(verdict, stage=stage, released=released,
                              message=violation_message(verdict, stage))


Replacement = str | Callable[[Verdict | ChunkVerdict], str]
"""What a flagged answer becomes: fixed text, or text made from the verdict (e.g. naming
`verdict.flagged_categories`, or routing self-harm to a help message)."""


def replacement_text(replacement: Replacement, verdict: Verdict | ChunkVerdict | None) -> str:
    if isinstance(replacement, str):
        return replacement
    assert verdict is not None
    return replacement(verdict)


class StreamModerator:
    """One moderation session driven chunk by chunk.

    Coalesces upstream deltas into chunks of at least `chunk_chars` characters (each feed is
    one check, so this bounds the checking cost for token-sized deltas), feeds the session,
    and accumulates the released text. Not thread-safe; one stream per moderator.
    """

    def __init__(
        self,
        guard: AnyGuard | None,
        prompt: PromptInput,
        *,
        config: GuardConfig | None = None,
        chunk_chars: int = 0,
        session: AnySession | None = None,
        on_verdict: VerdictHook | None = None,
    ) -> None:
        if chunk_chars < 0:
            raise ValueError("chunk_chars must be >= 0")
        self.guard: AnyGuard = resolve_guard(guard) if session is None or guard is None else guard
        self.prompt = prompt
        self.config = config
        self.chunk_chars = chunk_chars
        self.session: AnySession = (session if session is not None
                                    else require_sync(self.guard).session(prompt, config=config))
        self.pending = ""
        self.released = ""
        self.verdict: ChunkVerdict | None = None
        self.finished = False
        self.on_verdict = on_verdict
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._async: AsyncSessionProtocol | None = None
        self._flagged: dict[str, None] = {}
        self._blocked: dict[str, None] = {}

    @classmethod
    async def acreate(
        cls, guard: AnyGuard | None, prompt: PromptInput, *, config: GuardConfig | None = None,
        chunk_chars: int = 0, on_verdict: VerdictHook | None = None,
    ) -> StreamModerator:
        """Open the session without blocking the event loop (it encodes the prompt)."""
        resolved = await aresolve_guard(guard)
        session = await as_async(resolved).session(prompt, config=config)
        return cls(resolved, prompt, config=config, chunk_chars=chunk_chars, session=session,
                   on_verdict=on_verdict)

    @property
    def intercepted(self) -> bool:
        return self.verdict is not None and self.verdict.intercepted

    @property
    def flagged_categories(self) -> list[str]:
        """Every category that fired at a check of the answer so far, in order of first firing."""
        return list(self._flagged)

    @property
    def blocked_categories(self) -> list[str]:
        """Those of them whose action is block."""
        return list(self._blocked)

    @property
    def outcome(self) -> ChunkVerdict | None:
        """The last chunk's verdict with the categories of the whole stream so far: what a
        summary of the stream (metadata, events) reports."""
        if self.verdict is None:
            return None
        return self.verdict.model_copy(update={"flagged_categories": self.flagged_categories,
                                               "blocked_categories": self.blocked_categories})

    @property
    def prompt_verdict(self) -> Verdict | None:
        """The session's own check of the request, when the session ran one."""
        verdict = self.session.prompt_verdict
        return judge(verdict, self.config) if isinstance(verdict, Verdict) else None

    # -- steps ------------------------------------------------------------------------------------
    def _take(self, piece: str | bytes) -> str | None:
        """Add a delta; return the chunk to feed now, or None to keep accumulating."""
        if self.finished:
            raise RuntimeError("the stream is already finished")
        self.pending += self._decoder.decode(piece) if isinstance(piece, bytes) else piece
        if not self.pending or len(self.pending) < self.chunk_chars:
            return None
        chunk, self.pending = self.pending, ""
        return chunk

    def _tail(self) -> str:
        """At the end of the upstream: whatever is still pending (possibly "")."""
        self.pending += self._decoder.decode(b"", final=True)
        chunk, self.pending = self.pending, ""
        return chunk

    def _apply(self, verdict: ChunkVerdict) -> str:
        self.verdict = verdict
        self.released += verdict.released
        self._flagged.update(dict.fromkeys(verdict.flagged_categories))
        self._blocked.update(dict.fromkeys(verdict.blocked_categories))
        if self.on_verdict is not None:
            self.on_verdict("stream", verdict)
        if verdict.intercepted:
            self.finished = True
        return verdict.released

    def _closing(self) -> bool:
        """After the tail: whether the session still needs its close (no cut happened)."""
        if self.intercepted:
            return False
        self.finished = True
        return True

    @property
    def _sync(self) -> SessionProtocol:
        return require_sync_session(self.session)

    @property
    def _asession(self) -> AsyncSessionProtocol:
        if self._async is None:
            self._async = as_async_session(self.session)
        return self._async

    # -- sync -------------------------------------------------------------------------------------
    def feed(self, piece: str | bytes) -> str:
        """Add one upstream delta; return the text newly cleared for display."""
        chunk = self._take(piece)
        return self._apply(self._sync.feed(chunk)) if chunk is not None else ""

    def close(self) -> str:
        """End of the upstream stream: check the tail and return what is cleared."""
        if self.finished:
            return ""
        tail = self._tail()
        out = self._apply(self._sync.feed(tail)) if tail else ""
        return out + self._apply(self._sync.close()) if self._closing() else out

    def abort(self) -> None:
        """The stream ended early (upstream error, consumer gone): free the session's state.

        The embedded session holds nothing worth freeing; a sidecar session is deleted.
        """
        if self.finished:
            return
        self.finished = True
        delete = getattr(self.session, "delete", None)
        if callable(delete):
            with contextlib.suppress(Exception):
                result = delete()
                if hasattr(result, "close"):  # an async session's coroutine: never awaited here
                    result.close()

    # -- async ------------------------------------------------------------------------------------
    async def afeed(self, piece: str | bytes) -> str:
        chunk = self._take(piece)
        return self._apply(await self._asession.feed(chunk)) if chunk is not None else ""

    async def aclose(self) -> str:
        if self.finished:
            return ""
        tail = self._tail()
        out = self._apply(await self._asession.feed(tail)) if tail else ""
        return out + self._apply(await self._asession.close()) if self._closing() else out

    async def aabort(self) -> None:
        if self.finished:
            return
        self.finished = True
        delete = getattr(self._asession, "delete", None)
        if callable(delete):
            with contextlib.suppress(Exception):
                await delete()

    def violation(self) -> GuardrailViolation:
        assert self.verdict is not None
        return violation(self.verdict, "stream", self.released)


__all__ = ["Replacement", "StreamModerator", "VerdictHook", "judge", "replacement_text", "violation",
           "violation_message"]
