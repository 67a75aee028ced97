"""Moderation sessions: check a stream produced by another model, chunk by chunk.

The session keeps the KV cache of everything seen, so a chunk costs work proportional to
the chunk: its new tokens and a [CLS] query at each scheduled position inside them go
through a single forward pass.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from guardrail.model.check import CheckJudgement, check_categories, judge_check, record_check, verdict_for
from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.holdback import HoldBackBuffer
from guardrail.model.kvcache import truncate
from guardrail.model.masks import ClsQuery
from guardrail.model.plans import Forward, Plan, Tokenize, _Done, resume, run_in_place
from guardrail.model.policy import CheckSchedule, TauPolicy
from guardrail.model.prompts import LimitError, PromptInput, encode_prompt, fit_prompt
from guardrail.model.tokenstream import IncrementalTokenizer
from guardrail.types import ChunkVerdict, GuardConfig, Verdict, label_for, union_names


class SessionClosedError(RuntimeError):
    """A chunk arrived after the session was closed or intercepted."""


class ModerationState:
    """Everything a moderated stream knows, with the forward passes left to a driver.

    The embedded session drives it with direct engine calls; the sidecar drives it through
    its batcher, so many streams share passes. Same state machine, same results.

    Checks sit on token positions, never on chunk boundaries: a chunk of N new tokens gets a
    [CLS] query at each response length its `CheckSchedule` picks, all in the pass that
    appends the tokens, and tau, the hold-back and interception then run over those checks
    in order, exactly as if the tokens had arrived one at a time. How a caller splits its
    text changes neither the verdicts nor the intercept point.
    """

    last_unsafe = False
    """Whether the last applied response check was unsafe (binary score or a blocked category)."""

    def __init__(self, model: SafetyModel, config: GuardConfig, *, max_tokens: int | None = None) -> None:
        check_categories(model, config)  # an unknown category name fails before any work
        self.model = model
        self.config = config
        self.max_tokens = max_tokens  # response tokens the stream may hold (None: no limit)
        self.cache = model.new_cache()
        self.tokens = IncrementalTokenizer(model.tokenizer)
        self.prompt_ids: list[int] = []
        self.response: list[int] = []
        self.in_cache = 0  # response tokens whose keys/values are in the cache (the most recent ones)
        self.buffer = HoldBackBuffer(config.hold_back)
        self.policy = TauPolicy.from_config(config)
        self.schedule = CheckSchedule(config.strategy, config.period)
        self.checked_upto: int | None = None  # response length at the last check
        self.closed = False
        self.intercepted = False
        self.intercept_index: int | None = None
        self.released_text = ""
        self.last_score = 0.0
        self.last_categories: dict[str, float] = {}
        self.checks = 0
        self.prompt_verdict: Verdict | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    def encode_prompt(self, prompt: PromptInput) -> list[int]:
        return fit_prompt(encode_prompt(self.model.tokenizer, prompt), self.model.max_context // 2)

    def _request(self, token_ids: list[int], checks: list[ClsQuery]) -> Forward:
        return Forward(StepRequest(self.cache, token_ids, checks=checks))

    def start(self, prompt: PromptInput) -> Plan[Verdict]:
        """Encode and prefill the prompt with its check riding in the same pass."""
        verdict, _ = yield from self.start_with(prompt, "")
        return verdict

    def start_with(self, prompt: PromptInput,
                   first_response: str | bytes) -> Plan[tuple[Verdict, ChunkVerdict | None]]:
        """The prompt check and the first chunk of the response in one pass.

        Equivalent to `start(prompt)` then `feed(first_response)`, but the response's tokens
        and its scheduled checks ride in the prompt's prefill, so the first release costs no
        pass of its own. The chunk verdict is None when nothing was folded (an empty chunk,
        one too large for one piece, or one `feed` would refuse): feed it as usual then.
        """
        started = time.perf_counter()
        self.prompt_ids = yield Tokenize(lambda: self.encode_prompt(prompt))
        if first_response:
            saved = self._snapshot()
            try:
                new_ids: list[int] = yield Tokenize(lambda: self.tokens.feed(first_response))
            except Exception:
                new_ids = []  # `feed` will raise the same error, on the unchanged state
            if not new_ids or len(new_ids) > self._fold_limit():
                self._restore(saved)
            else:
                try:
                    chunk = yield from self._folded(self.advance(new_ids, final=False), started)
                except BaseException:
                    self._restore(saved)
                    raise
                assert self.prompt_verdict is not None
                return self.prompt_verdict, chunk
        out = yield self._request(self.prompt_ids, [self._query(0)])
        return self._prompt_checked(out.score, out.categories, started), None

    def _fold_limit(self) -> int:
        """Response tokens a folded first chunk may hold: what `feed` prefills in one piece, and
        within the session's own token limit."""
        piece = max(1, self.model.max_context // 4)
        return piece if self.max_tokens is None else min(piece, self.max_tokens)

    def _prompt_checked(self, score: float | None, categories: dict[str, float],
                        started: float) -> Verdict:
        self.checks += 1
        self.last_score = float(score or 0.0)
        self.last_categories = dict(categories)
        self.prompt_verdict = verdict_for(self.last_score, self.config, self.prompt_len, started, categories,
                                          self.model.head.category_thresholds)
        return self.prompt_verdict

    def _folded(self, chunk: Plan[ChunkVerdict], started: float) -> Plan[ChunkVerdict]:
        """Drive a chunk's plan with the prompt folded into its first pass.

        The prompt's tokens go first in that pass and its [CLS] query last (an engine that
        reports categories at the last check only then still reports the prompt's); the
        prompt verdict is recorded before the chunk sees its share of the output, as if the
        prompt had had its own pass. Nothing else in the chunk's plan changes.
        """
        answer: Any = None
        error: BaseException | None = None
        folded = False
        while not isinstance(item := resume(chunk, answer, error), _Done):
            answer, error = None, None
            if folded or not isinstance(item, Forward):
                try:
                    answer = yield item
                except Exception as exc:
                    error = exc
                continue
            folded = True
            request = item.request
            checks = [*request.checks, self._query(0)]
            try:
                out = yield Forward(StepRequest(request.cache, self.prompt_ids + request.token_ids,
                                                checks=checks, want_logits=request.want_logits))
            except Exception as exc:
                error = exc
                continue
            answer = item.answer(self._split_prompt_check(out, started))
        if not folded:  # nothing needed a pass: the prompt gets its own
            out = yield self._request(self.prompt_ids, [self._query(0)])
            self._prompt_checked(out.score, out.categories, started)
        result: ChunkVerdict = item.value
        return result

    def _split_prompt_check(self, out: StepOutput, started: float) -> StepOutput:
        """Record the prompt check (the last of a folded pass); the chunk's own share of `out`."""
        per_check = out.category_scores
        self._prompt_checked(out.scores[-1], per_check[-1], started)
        scores = out.scores[:-1]
        changes: dict[str, Any] = {
            "score": scores[-1] if scores else None, "scores": scores,
            "categories": per_check[-2] if scores else {}, "category_scores": per_check[:-1],
        }
        return dataclasses.replace(out, **changes)

    def ensure_open(self) -> None:
        if self.closed:
            raise SessionClosedError("session is closed" if not self.intercepted else
                                     "session was intercepted; no more chunks are accepted")

    def feed(self, chunk: str | bytes) -> Plan[ChunkVerdict]:
        """One chunk: tokenise it, check it, release what is safe. A failure changes nothing."""
        self.ensure_open()
        return (yield from self._transaction(chunk, final=False))

    def close(self) -> Plan[ChunkVerdict]:
        """End of the stream: tokenise and check the tail, release it if safe."""
        if self.closed:
            raise SessionClosedError("session is already closed")
        return (yield from self._transaction(b"", final=True))

    def _transaction(self, chunk: str | bytes, *, final: bool) -> Plan[ChunkVerdict]:
        saved = self._snapshot()
        try:
            new_ids: list[int] = yield Tokenize(
                self.tokens.flush if final else lambda: self.tokens.feed(chunk))
            if self.max_tokens is not None and len(self.response) + len(new_ids) > self.max_tokens:
                raise LimitError(f"the response would exceed this session's limit of {self.max_tokens} "
                                 f"tokens ({len(self.response)} so far, {len(new_ids)} more)")
            return (yield from self.advance(new_ids, final=final))
        except BaseException:
            self._restore(saved)
            raise

    def _snapshot(self) -> tuple[Any, ...]:
        b = self.buffer
        return (self.tokens.snapshot(), len(self.response), self.cache, self.cache.get_seq_length(),
                self.in_cache, (b.total, b.released, b.cleared, b.closed), self.policy.streak,
                self.schedule._next, self.checked_upto, self.closed, self.intercepted,
                self.intercept_index, self.released_text, self.last_score, self.last_categories,
                self.checks, self.last_unsafe)

    def _restore(self, saved: tuple[Any, ...]) -> None:
        """Undo a failed chunk: tokenizer, response, cache, buffer, policy, schedule."""
        (tokens, n_response, self.cache, cache_len, self.in_cache, buffer, self.policy.streak,
         self.schedule._next, self.checked_upto, self.closed, self.intercepted, self.intercept_index,
         self.released_text, self.last_score, self.last_categories, self.checks, self.last_unsafe) = saved
        self.tokens.restore(tokens)
        del self.response[n_response:]
        truncate(self.cache, cache_len)
        self.buffer.total, self.buffer.released, self.buffer.cleared, self.buffer.closed = buffer

    def advance(self, new_ids: list[int], *, final: bool) -> Plan[ChunkVerdict]:
        """Append tokens with their scheduled checks, apply each check in order; the chunk verdict.

        `ChunkVerdict.score` is the score of the chunk's last check (the previous check's
        score when no scheduled position fell inside the chunk). On `final`, a check covering
        the whole response closes the stream unless the last scheduled one already did. The
        chunk's flagged and blocked categories are those that fired at any of its checks, in
        the order they first fired; a blocked one makes the chunk's label unsafe.
        """
        started = time.perf_counter()
        begin = len(self.response)
        self.response.extend(new_ids)
        self.buffer.append(len(new_ids))
        end = len(self.response)
        due = self.schedule.positions(begin, end)
        if final and self.checked_upto != end and (not due or due[-1] != end):
            due.append(end)
        piece = max(1, self.model.max_context // 4)  # a huge chunk is prefilled in pieces
        at = begin  # response tokens in the cache so far
        flagged: list[str] = []
        blocked: list[str] = []
        while not self.closed and (at < end or due):
            part = self.response[at : min(end, at + piece)]
            here = [p for p in due if p <= at + len(part)]
            del due[: len(here)]
            yield from self._make_room(at, len(part))
            out = yield self._request(part, [self._query(p - at) for p in here])
            self.in_cache += len(part)
            at += len(part)
            for position, score, categories in zip(here, out.scores, out.category_scores, strict=True):
                fired = self._apply(position, score, final=final and position == end, categories=categories)
                flagged = union_names(flagged, fired.flagged)
                blocked = union_names(blocked, fired.blocked)
                if self.closed:
                    break
        if final and not self.closed:
            if self.checked_upto == end and self.last_unsafe:
                self._intercept()  # the last check covered everything and was unsafe
            else:
                self.buffer.finish(True)
                self.closed = True
        end = self.tokens.end_of(self.buffer.released)
        if final and not self.intercepted and self.buffer.released == len(self.response):
            end = len(self.tokens.text)  # the whole stream, trailing invisible characters included
        newly = self.tokens.raw[len(self.released_text) : end]
        self.released_text += newly
        if self.closed:  # nothing more will be checked: free the KV cache now
            self.cache = self.model.new_cache()
            self.in_cache = 0
        return ChunkVerdict(
            label="unsafe" if blocked else label_for(self.last_score, self.config.threshold),
            score=self.last_score, threshold=self.config.threshold, released=newly,
            intercepted=self.intercepted, intercept_index=self.intercept_index,
            tokens=len(self.response), latency_ms=(time.perf_counter() - started) * 1000,
            categories=self.last_categories, flagged_categories=flagged, blocked_categories=blocked,
        )

    def _apply(self, position: int, score: float, *, final: bool,
               categories: dict[str, float] | None = None) -> CheckJudgement:
        """One check over the first `position` response tokens: tau, hold-back, interception.

        The check is unsafe when its score reaches the threshold or a `block` category fired
        (`judge_check`); either feeds tau, the hold-back and the final check alike. `checks`
        counts the checks applied; those a pass scored past an interception are not.
        """
        judged = judge_check(score, self.config, categories, self.model.head.category_thresholds)
        self.checks += 1
        self.last_score = score
        self.last_categories = dict(categories or {})
        self.last_unsafe = judged.unsafe
        self.checked_upto = position
        act = record_check(self.policy, score, judged)
        if act or (final and judged.unsafe):
            self._intercept()
            return judged
        self.buffer.on_check(position, judged.unsafe)
        if final:
            self.buffer.finish(True)
            self.closed = True
        return judged

    def _intercept(self) -> None:
        self.buffer.intercept()
        self.closed = self.intercepted = True
        self.intercept_index = self.buffer.released

    def _query(self, offset: int) -> ClsQuery:
        """A check over the cache plus the first `offset` tokens of the pass being planned."""
        return ClsQuery(seen=self.prompt_len + self.in_cache + offset, prompt_len=self.prompt_len,
                        window=self.config.window)

    def _make_room(self, at: int, n_new: int) -> Plan[None]:
        """Past the context limit, re-encode the prompt and the response tokens just before `at`.

        Rare by design (it costs one re-encode); the [CLS] window then starts later.
        """
        if self.prompt_len + self.in_cache + n_new + 1 <= self.model.max_context:
            return
        keep = min(at, max(0, self.model.max_context // 2 - self.prompt_len))
        recent = self.response[at - keep : at]
        self.cache = self.model.new_cache()
        yield self._request(self.prompt_ids + recent, [])
        self.in_cache = len(recent)


class ModerationSession:
    """The embedded moderation session: `feed(chunk)` per chunk, then `close()`.

    `max_tokens` caps the response tokens it accepts (`LimitError`, on a chunk or at close).
    """

    def __init__(self, model: SafetyModel, prompt: PromptInput, config: GuardConfig, *,
                 max_tokens: int | None = None) -> None:
        self.model = model
        self.config = config
        self._lock = threading.Lock()
        self.state = ModerationState(model, config, max_tokens=max_tokens)
        self.prompt_verdict = run_in_place(model, self.state.start(prompt))

    @property
    def response(self) -> list[int]:
        return self.state.response

    @property
    def released_text(self) -> str:
        return self.state.released_text

    @property
    def closed(self) -> bool:
        return self.state.closed

    @property
    def intercepted(self) -> bool:
        return self.state.intercepted

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        """Add one chunk of the response; return the verdict and the text now safe to show."""
        with self._lock:
            return run_in_place(self.model, self.state.feed(chunk))

    def close(self) -> ChunkVerdict:
        """End of the stream: check the unfinished tail and release it if safe."""
        with self._lock:
            return run_in_place(self.model, self.state.close())
