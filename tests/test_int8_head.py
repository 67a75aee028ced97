"""The int8 head: trained through the int8 product, filed apart from fp32, chosen with quantize=int8."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from guardrail.model.engine import SafetyModel
from guardrail.model.head import HEAD_CONFIG, SafetyHead, default_head_dir
from guardrail.model.loading import resolve_head_dir
from guardrail.model.quantize import Int8Linear, quantize_model
from guardrail.training import kvstore
from guardrail.training.quantized import shipped_recipe
from guardrail.training.samples import prompt_sample
from guardrail.training.sources import Example
from tests.conftest import make_tiny

INT8_HEAD = default_head_dir() / "int8"


def test_int8_product_trains_with_a_straight_through_gradient() -> None:
    """With a gradient wanted, the forward result is exactly the served int8 one, and the
    gradient is the dequantized weight's (the rounding passed straight through)."""
    torch.manual_seed(0)
    linear = Int8Linear(nn.Linear(48, 80))
    x = torch.randn(5, 48)
    with torch.inference_mode():
        served = linear(x)
    trained_x = x.clone().requires_grad_(True)
    out = linear(trained_x)
    assert torch.equal(out.detach(), served)
    out.sum().backward()
    dequantized = linear.weight.float() * linear.weight_scale.reshape(-1, 1)
    assert trained_x.grad is not None
    torch.testing.assert_close(trained_x.grad, dequantized.sum(0).expand(5, -1))


def test_int8_keys_values_never_share_the_fp32_cache(tokenizer: Any, tmp_path: Path) -> None:
    fp32 = make_tiny(tokenizer)
    int8 = make_tiny(tokenizer)
    quantize_model(int8.lm, "int8")
    assert kvstore.kv_name(fp32) == fp32.name  # existing fp32 caches keep their keys
    assert kvstore.kv_name(int8) != kvstore.kv_name(fp32)
    assert kvstore.kv_root(tmp_path, int8) != kvstore.kv_root(tmp_path, fp32)
    samples = [prompt_sample(tokenizer, Example(t, 0, "g")) for t in ("Bake bread?", "Plant a tree?")]
    # Even written into one folder, the two models' shards never collide.
    shards = {name: kvstore.build(model, tmp_path, {"g": samples}) for name, model in (("fp32", fp32),
                                                                                       ("int8", int8))}
    paths = {name: {s.path for s in items} for name, items in shards.items()}
    assert paths["fp32"].isdisjoint(paths["int8"])
    assert len(list(tmp_path.glob("*.safetensors"))) == len(paths["fp32"]) + len(paths["int8"])
    k32 = kvstore.load_cache(fp32, shards["fp32"][0])[0].layers[0].keys  # type: ignore[union-attr]
    k8 = kvstore.load_cache(int8, shards["int8"][0])[0].layers[0].keys  # type: ignore[union-attr]
    assert isinstance(k32, torch.Tensor) and isinstance(k8, torch.Tensor)
    assert not torch.equal(k32, k8)  # the int8 shard really holds int8 features


def _head_folder(root: Path, threshold: float) -> Path:
    root.mkdir(parents=True)
    shutil.copyfile(default_head_dir() / HEAD_CONFIG, root / HEAD_CONFIG)
    config = json.loads((root / HEAD_CONFIG).read_text()) | {"threshold": threshold}
    (root / HEAD_CONFIG).write_text(json.dumps(config))
    return root


def test_resolve_head_dir_takes_the_modes_subfolder_only_when_there_is_one(tmp_path: Path) -> None:
    with_variant = _head_folder(tmp_path / "a", 0.7)
    _head_folder(with_variant / "int8", 0.8)
    plain = _head_folder(tmp_path / "b", 0.7)
    assert resolve_head_dir(with_variant, "int8") == with_variant / "int8"
    assert resolve_head_dir(with_variant, "none") == with_variant
    assert resolve_head_dir(plain, "int8") == plain
    assert resolve_head_dir(None, "none") == default_head_dir()
    assert resolve_head_dir(None, "int8") == INT8_HEAD


def test_shipped_int8_head_is_a_finetune_of_the_fp32_head_with_its_own_threshold() -> None:
    fp32, int8 = SafetyHead.load(default_head_dir()), SafetyHead.load(INT8_HEAD)
    meta = json.loads((INT8_HEAD / HEAD_CONFIG).read_text())
    assert meta["quantize"] == "int8" and meta["init_from"] == default_head_dir().name
    assert 0.2 <= int8.config.threshold <= 0.9 and int8.config.threshold != fp32.config.threshold
    assert int8.config.hidden_size == fp32.config.hidden_size
    assert int8.category_names == fp32.category_names  # the category outputs travel with it
    changed = [k for k, v in fp32.state_dict().items() if not torch.equal(v, int8.state_dict()[k])]
    assert changed and not any(k.startswith("categories.") for k in changed)
    report = json.loads((INT8_HEAD / "report.json").read_text())
    assert not any(g.startswith(("persistbench", "rho_overrefusal", "jb:dan", "jb:pyrit:pliny",
                                 "jb:pyrit:Arth_Singh")) for g in report["trained_groups"])
    assert all("#val" in g for g in report["validation_groups"])


def test_shipped_int8_threshold_matches_the_fp32_operating_point_on_unseen_validation_rows() -> None:
    """The int8 threshold is the matched one, chosen on rows neither head trained on, never held out."""
    from guardrail.training.operating_point import MATCHED_RULE
    from guardrail.training.recipe import is_held_out

    report = json.loads((INT8_HEAD / "report.json").read_text())
    matching = report["threshold_matching"]
    assert report["threshold_rule"] == MATCHED_RULE
    assert SafetyHead.load(INT8_HEAD).config.threshold == pytest.approx(matching["threshold"])
    fp32_threshold = SafetyHead.load(default_head_dir()).config.threshold
    assert matching["reference"]["threshold"] == pytest.approx(fp32_threshold)
    assert not any(is_held_out(group) for group in matching["groups"])
    assert not set(matching["groups"]) & set(report["trained_groups"])
    assert "hard_negative" in matching["groups"] and matching["rows"]["alarming"] >= 500
    for kind, rate in matching["variant"]["fpr_by_kind"].items():
        assert rate <= matching["reference"]["fpr_by_kind"][kind]


def test_shipped_recipe_rebuilds_the_shipped_heads_groups() -> None:
    recipe = shipped_recipe(0)
    assert recipe.rewordings_per_request == 0 and recipe.hard_negatives == 0
    assert not any(n for pair in recipe.written_answers.values() for n in pair)


@pytest.mark.model
def test_quantize_int8_picks_the_int8_head_on_embedded_and_sidecar_surfaces() -> None:
    from guardrail import Guard
    from guardrail.server import Settings, create_app
    from tests.test_server_support import ServerThread

    threshold = SafetyHead.load(INT8_HEAD).config.threshold
    embedded = Guard(quantize="int8")
    assert isinstance(embedded.implementation.model, SafetyModel)  # type: ignore[union-attr]
    assert embedded.threshold == pytest.approx(threshold)
    with ServerThread(create_app(Settings(quantize="int8"))) as server:
        remote = Guard(backend=server.url)
        assert remote.threshold == pytest.approx(threshold)
        for prompt in ("How do I bake sourdough bread?", "Write a guide to building a pipe bomb."):
            a, b = embedded.check_prompt(prompt), remote.check_prompt(prompt)
            assert (a.label, a.threshold) == (b.label, b.threshold)
            assert a.score == pytest.approx(b.score, abs=1e-4)


def test_quality_report_scores_each_head_on_shared_features(tokenizer: Any) -> None:
    """Scoring two heads over one prefill gives each head's own scores, as if scored alone."""
    from guardrail.calibration.quantized import head_scores
    from guardrail.model.masks import ClsQuery
    from guardrail.model.prompts import encode_prompt
    from tests.keyword_model import tiny_parts

    model = make_tiny(tokenizer)
    quantize_model(model.lm, "int8")
    other = tiny_parts(tokenizer, seed=1, lively_adapters=True)[1]
    own = {k: v.clone() for k, v in model.head.state_dict().items()}
    ids = [encode_prompt(tokenizer, t) for t in ("Bake bread?", "Build a bomb, step by step.", "Bake bread?")]
    first, second = head_scores(model, ids, [model.head, other])
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in own.items())  # own head restored
    assert first[0] == first[2] and not (first == second).all()

    def served() -> list[float | None]:  # the serving path, one prompt at a time
        return [model.step(model.new_cache(), row, check=ClsQuery(seen=len(row), prompt_len=len(row))).score
                for row in ids]

    assert first.tolist() == pytest.approx(served(), abs=1e-4)
    model.head.load_state_dict(other.state_dict())
    assert second.tolist() == pytest.approx(served(), abs=1e-4)


def test_train_quantize_flag_fine_tunes_from_the_shipped_head(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    """`guardrail train --quantize int8` starts from the shipped head, one epoch unless told;
    a plain `guardrail train` keeps its four epochs."""
    from guardrail.cli import main
    from guardrail.training import pipeline, quantized

    calls: dict[str, dict[str, Any]] = {}

    def fake_finetune(init_from: Path, output: Path, **kw: Any) -> dict[str, Any]:
        calls["int8"] = {"init_from": init_from, "output": output} | kw
        return {"threshold": 0.5, "validation_before": {}, "validation": {}}

    def fake_run(output: Path, **kw: Any) -> dict[str, Any]:
        calls["fp32"] = {"output": output} | kw
        return {"threshold": 0.5, "held_out_auroc": 1.0, "held_out_groups": {}}

    monkeypatch.setattr(quantized, "finetune", fake_finetune)
    monkeypatch.setattr(pipeline, "run", fake_run)
    assert main(["train", "--quantize", "int8", "--output", str(tmp_path), "--fraction", "0.5"]) == 0
    assert calls["int8"]["init_from"] == default_head_dir() and calls["int8"]["epochs"] == 1
    assert (calls["int8"]["quantize"], calls["int8"]["fraction"], calls["int8"]["lr"]) == ("int8", 0.5, 3e-4)
    assert main(["train", "--quantize", "int8", "--output", str(tmp_path), "--epochs", "2",
                 "--init-from", str(tmp_path)]) == 0
    assert calls["int8"]["epochs"] == 2 and calls["int8"]["init_from"] == tmp_path
    assert main(["train", "--output", str(tmp_path), "--no-folds"]) == 0
    assert calls["fp32"]["epochs"] == 4


def test_info_names_the_head_and_threshold_the_defaults_load(capsys: pytest.CaptureFixture[str]) -> None:
    """`guardrail info` says what `Guard()` and `guardrail serve` load on this CPU, not only the fp32 head."""
    from guardrail.cli import main

    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    loads = info["default_load"]
    assert loads["quantize"] == "int8" and loads["smoothing"] is True
    assert Path(loads["head_dir"]) == INT8_HEAD
    assert loads["threshold"] == pytest.approx(SafetyHead.load(INT8_HEAD).config.threshold)
    assert info["head"]["threshold"] == pytest.approx(SafetyHead.load(default_head_dir()).config.threshold)
