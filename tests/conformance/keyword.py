"""The keyword model of `test_server_support`, scoring in `step` too, so the embedded guard's
sessions (which step one stream at a time) read the keyword as the sidecar's batcher does.

Once the engine's own keyword model (`step` and `step_many` both scored) is on main, this
module can import it instead.
"""

from __future__ import annotations

from typing import Any

from guardrail.model.engine import SafetyModel, StepOutput
from guardrail.model.masks import ClsQuery
from tests.test_server_support import KeywordSafetyModel, _contains, make_model


class SteppedKeywordModel(KeywordSafetyModel):
    def step(self, cache: Any, token_ids: list[int], *, check: ClsQuery | None = None,
             want_logits: bool = True) -> StepOutput:
        past = cache.get_seq_length()
        out = SafetyModel.step(self, cache, token_ids, check=check, want_logits=want_logits)
        history = getattr(cache, "_kw_history", [])[:past] + list(token_ids)
        cache._kw_history = history
        if check is not None:
            seen = history[: check.seen]
            out.score = 0.99 if any(_contains(seen, kw) for kw in self.keyword_ids) else 0.01
        return out


def make_keyword_model(tokenizer: Any, *, threshold: float | None = None) -> SteppedKeywordModel:
    model = make_model(tokenizer)
    model.__class__ = SteppedKeywordModel
    if threshold is not None:
        model.head.config.threshold = threshold
    assert isinstance(model, SteppedKeywordModel)
    return model


CALIBRATED = 0.7
"""The head's calibrated threshold in the conformance suite: not the protocol default (0.5), so
a surface that ignores the server's calibration shows."""


def served_model() -> SteppedKeywordModel:
    """The conformance model, built inside a Ray replica (`model_factory`)."""
    from transformers import AutoTokenizer

    from guardrail.model.loading import default_model_dir

    return make_keyword_model(AutoTokenizer.from_pretrained(str(default_model_dir())), threshold=CALIBRATED)
