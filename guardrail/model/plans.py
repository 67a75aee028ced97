"""The one vocabulary of engine work, and the in-place driver.

Everything the engine does for a caller (a one-shot check, a moderation session's chunk, a
guarded generation) is written once, as a sans-IO plan: a generator that yields the work it
needs (`Forward`, `ForwardAll`, `TokenizerWork`, `CacheWork`) and the events it produces, and
receives each piece of work's answer. A plan never runs a model or a tokenizer itself, so two
drivers run every plan:

- in place (`run_in_place`, `events_in_place`, here): the embedded guard, on the caller's thread;
- batched (`guardrail.server.driver`): forward passes join other streams' passes in the
  batcher, tokenizer work runs on the tokenizer thread, nothing heavy on the event loop.

When a piece of work fails, the driver throws the error into the plan, so a plan that must
leave its state unchanged can restore it before the error reaches the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from guardrail.model.engine import StepOutput, StepRequest

if TYPE_CHECKING:
    from guardrail.model.engine import SafetyModel

T = TypeVar("T")


@dataclass
class Forward:
    """One stream's forward pass (new tokens and [CLS] checks); answered with a `StepOutput`,
    or with what `post` makes of it. `post` runs where the pass ran (the server's model
    worker), so sampling stays next to the logits."""

    request: StepRequest
    post: Callable[[StepOutput], Any] | None = None

    def answer(self, out: StepOutput) -> Any:
        return self.post(out) if self.post is not None else out


@dataclass
class ForwardAll:
    """Independent forward passes (a batch of one-shot checks); answered with their outputs,
    in order. The batched driver lets them share passes with other work."""

    requests: list[StepRequest]


class TokenizerWork:
    """Tokenizer work (encode, decode); answered with `run()`'s result. The server runs it on
    its tokenizer thread: fast tokenizers are not safe to drive from several threads."""

    def run(self) -> Any:
        raise NotImplementedError


@dataclass
class Tokenize(TokenizerWork):
    """Any tokenizer-side function of a plan (prompt encoding, incremental tokenisation)."""

    fn: Callable[[], Any]

    def run(self) -> Any:
        return self.fn()


class CacheWork:
    """Model-side work other than a pass (cache surgery); the server runs it on the model
    worker, in order with the passes."""

    def run(self) -> Any:
        raise NotImplementedError


Work = Forward | ForwardAll | TokenizerWork | CacheWork
#: A plan: yields work (answered) and events (answered with None); returns its result.
Plan = Generator[Any, Any, T]


class _Done:
    """The plan finished; `value` is its result."""

    def __init__(self, value: Any) -> None:
        self.value = value


def resume(plan: Plan[Any], answer: Any = None, error: BaseException | None = None) -> Any:
    """Hand the plan the answer to its last item (or the error that item raised); return its
    next item, or `_Done` with its result. The step both drivers share."""
    try:
        if error is not None:
            return plan.throw(error)
        return plan.send(answer)
    except StopIteration as done:
        return _Done(done.value)


def is_work(item: Any) -> bool:
    return isinstance(item, Forward | ForwardAll | TokenizerWork | CacheWork)


def perform_in_place(model: SafetyModel, item: Any) -> Any:
    """Do one piece of work on the caller's thread."""
    if isinstance(item, Forward):
        r = item.request
        return item.answer(model.step(r.cache, r.token_ids, checks=r.checks, want_logits=r.want_logits))
    if isinstance(item, ForwardAll):
        return model.step_many(item.requests)
    return item.run()


def events_in_place(model: SafetyModel, plan: Plan[T]) -> Generator[Any, None, T]:
    """Drive a plan in place: yield its events; return its result."""
    answer: Any = None
    error: BaseException | None = None
    while not isinstance(item := resume(plan, answer, error), _Done):
        answer, error = None, None
        if not is_work(item):
            yield item
            continue
        try:
            answer = perform_in_place(model, item)
        except Exception as exc:
            error = exc
    result: T = item.value
    return result


def run_in_place(model: SafetyModel, plan: Plan[T]) -> T:
    """Drive a plan that produces no events in place; return its result."""
    events: Iterator[Any] = events_in_place(model, plan)
    try:
        while True:
            event = next(events)
            raise TypeError(f"this plan yields events ({type(event).__name__}); use events_in_place")
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
