"""The conformance suite's model: the keyword model of `test_server_support` with a calibrated
threshold that is not the protocol default, so a surface that ignores calibration shows."""

from __future__ import annotations

from typing import Any

from tests.test_server_support import KeywordSafetyModel, make_model

SteppedKeywordModel = KeywordSafetyModel
"""The keyword model scores in `step` and `step_many` alike (`tests.keyword_model`)."""


def make_keyword_model(tokenizer: Any, *, threshold: float | None = None) -> SteppedKeywordModel:
    model = make_model(tokenizer)
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
