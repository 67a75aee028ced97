"""Shared fixtures: a tiny random Llama for fast engine tests, the real default model for integration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from guardrail.model.engine import SafetyModel
from guardrail.model.head import HeadConfig, SafetyHead
from guardrail.model.loading import default_model_dir
from tests.backends import BACKENDS, RayBackend, SidecarBackend, UvicornBackend

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(str(default_model_dir()))


def make_tiny(tokenizer, *, seed: int = 0, max_context: int | None = None) -> SafetyModel:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
    )
    lm = LlamaForCausalLM(config).eval()
    lm.requires_grad_(False)
    head = SafetyHead(HeadConfig(hidden_size=32, num_layers=2, adapter_rank=4, classifier_hidden=16))
    with torch.no_grad():  # non-trivial adapters, so a mask bug would show in the scores
        head.init_cls_from(lm.get_input_embeddings().weight)
        for adapter in head.adapters:
            torch.nn.init.normal_(adapter.up.weight, std=0.5)
            torch.nn.init.normal_(adapter.bias, std=0.5)
    return SafetyModel(lm, tokenizer, head, name="tiny", max_context=max_context)


@pytest.fixture()
def tiny(tokenizer) -> SafetyModel:  # type: ignore[no-untyped-def]
    return make_tiny(tokenizer)


@pytest.fixture(scope="session")
def guard() -> Iterator[object]:
    from guardrail.guard import Guard

    yield Guard()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[SimpleNamespace]:
    """A local Ray instance (2 CPUs) with Serve listening on a loopback port, for the session."""
    try:
        import ray
        from ray import serve
    except ImportError:
        pytest.skip("Ray Serve is not installed (pip install 'guardrail[ray]'); Ray backend tests skipped")
    from guardrail.server.background import free_port

    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env},
             configure_logging=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield SimpleNamespace(ray=ray, url=f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tokenizer: object) -> SidecarBackend:
    """Each serving backend in turn (module scope: one server per backend per module)."""
    if request.param == "ray":
        return RayBackend(request.getfixturevalue("ray_cluster"))
    return UvicornBackend(tokenizer)
