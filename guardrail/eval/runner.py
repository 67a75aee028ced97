"""Run evaluation items guarded and unguarded, appending one JSON line per finished item.

A full run takes hours on a CPU, so it must survive interruption: each item's record is
written (and flushed to disk) only once both of its generations are done, under a stable
item id. A rerun with the same output folder skips every id already on disk; a half-written
last line from a killed run is dropped, never duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrail.eval.judge import RefusalJudge
from guardrail.eval.suites import PREFILL_LENGTHS, PREFILL_OPENING, EvalItem
from guardrail.types import DoneEvent, InterceptEvent, ScoreEvent

RESULTS_FILE = "results.jsonl"
PREFILLS_FILE = "prefills.jsonl"
RUN_FILE = "run.json"
#: Settings that change what an item's record means; a resume must not mix two of them.
FINGERPRINT_KEYS = ("model", "head", "guard_config", "max_new_tokens", "judge")


class RunMismatchError(ValueError):
    """The output folder holds results produced under different settings."""


class ResultStore:
    """Append-only JSONL of item records, keyed by item id."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, *, repair: bool = True) -> dict[str, dict[str, Any]]:
        """Finished records by id. Repairs the file if a killed run left a broken line.

        Readers that may run beside a live run (report rebuilding) pass repair=False: the
        last line may be one that is being written right now.
        """
        if not self.path.is_file():
            return {}
        records: dict[str, dict[str, Any]] = {}
        raw = self.path.read_text(encoding="utf-8")
        lines = raw.splitlines()
        broken = False
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                broken = True
                continue
            if not isinstance(record, dict) or "id" not in record:
                broken = True
                continue
            if record["id"] in records:
                broken = True  # keep the first; rewrite the file without the copy
                continue
            records[record["id"]] = record
        if repair and (broken or (raw and not raw.endswith("\n"))):
            self._rewrite(records.values())
        return records

    def _rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


@dataclass
class RunSettings:
    """What produced a run; the fingerprint part must match on resume."""

    max_new_tokens: int = 48
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def guard_fingerprint(guard: Any) -> dict[str, Any]:
    """Model name, head weights hash and guard config: results under another head are not comparable."""
    info: dict[str, Any] = {"guard_config": guard.config.model_dump()}
    model = getattr(guard, "model", None)
    if model is None:  # a sidecar: only its URL is known here
        remote = getattr(guard, "_remote", None)
        info["model"] = f"remote:{getattr(remote, 'base_url', 'unknown')}"
        info["head"] = "remote"
        return info
    info["model"] = str(getattr(model, "name", "unknown"))
    digest = hashlib.sha256()
    for key, tensor in sorted(model.head.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    info["head"] = digest.hexdigest()[:16]
    status = getattr(getattr(model.head, "config", None), "status", None)
    if status is not None:
        info["head_status"] = status
    return info


def check_run(out_dir: Path, meta: dict[str, Any]) -> None:
    """Write run.json, or check that an existing one was made under the same settings."""
    path = out_dir / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diffs = [k for k in FINGERPRINT_KEYS if old.get(k) != meta.get(k)]
        if diffs:
            raise RunMismatchError(
                f"{out_dir} holds results made with different {', '.join(diffs)}; "
                "use another --output folder (or --fresh to discard them)"
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2), encoding="utf-8")


def discard_run(out_dir: Path) -> None:
    """Remove a previous run's files (only the files this runner writes)."""
    for name in (RESULTS_FILE, PREFILLS_FILE, RUN_FILE):
        (out_dir / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Prefill openings
# ---------------------------------------------------------------------------


def _token_prefix(guard: Any, text: str, n: int) -> tuple[str, int]:
    """The first `n` tokens of `text` (words when the guard is remote), and how many there were."""
    model = getattr(guard, "model", None)
    if model is None:
        words = text.split(" ")
        return " ".join(words[:n]), min(n, len(words))
    from guardrail.model.prompts import encode_text

    ids = encode_text(model.tokenizer, text)[:n]
    return model.tokenizer.decode(ids, skip_special_tokens=True), len(ids)


class PrefillCache:
    """One affirmative opening per request, padded by the unguarded model and kept on disk.

    All lengths of one request are prefixes of the same text, so prefill_5 to prefill_40
    differ only in how much of the opening is forced; a resumed run reuses the same text.
    """

    def __init__(self, path: Path, judge: RefusalJudge) -> None:
        self.path = path
        self.judge = judge
        self.store = ResultStore(path)
        self.openings = {k: v for k, v in self.store.load().items()}

    def opening(self, guard: Any, item: EvalItem) -> dict[str, Any]:
        key = item.group
        if key not in self.openings:
            longest = max(PREFILL_LENGTHS)
            result = guard.generate_text(
                item.prompt, max_new_tokens=longest, prefill=PREFILL_OPENING, guard=False
            )
            text = (
                result.text if result.text.startswith(PREFILL_OPENING[:8]) else PREFILL_OPENING + result.text
            )
            record = {
                "id": key,
                "request": item.request,
                "text": text,
                "continuation_refuses": self.judge.judge(text[len(PREFILL_OPENING) :]).refused,
            }
            self.store.append(record)
            self.openings[key] = record
        return self.openings[key]

    def prefill_for(self, guard: Any, item: EvalItem) -> tuple[str | None, int, bool]:
        """(prefill text, its length in tokens, whether the padding itself was a refusal)."""
        if item.prefill is not None:
            return item.prefill, _token_prefix(guard, item.prefill, 10**6)[1], False
        if item.prefill_tokens <= 0:
            return None, 0, False
        record = self.opening(guard, item)
        text, n = _token_prefix(guard, record["text"], item.prefill_tokens)
        return text, n, bool(record.get("continuation_refuses"))


# ---------------------------------------------------------------------------
# One item
# ---------------------------------------------------------------------------


def _generate(
    guard: Any,
    item: EvalItem,
    prefill: str | None,
    max_new_tokens: int,
    guarded: bool,
    judge: RefusalJudge,
    prefill_len: int,
) -> dict[str, Any]:
    """One generation, recorded with its checks, interception and timing."""
    started = time.perf_counter()
    scores: list[list[float]] = []
    intercept: InterceptEvent | None = None
    intercept_ms: float | None = None
    seen_at_cut: int | None = None
    done: DoneEvent | None = None
    for event in guard.generate(
        item.prompt,
        max_new_tokens=max_new_tokens,
        prefill=prefill,
        guard=guarded,
        temperature=item.temperature,
        top_p=item.top_p,
        seed=item.seed,
    ):
        if isinstance(event, ScoreEvent):
            scores.append([event.index, round(event.score, 5)])
        elif isinstance(event, InterceptEvent):
            intercept = event
            intercept_ms = (time.perf_counter() - started) * 1000
            seen_at_cut = int(scores[-1][0]) if scores else 0
        elif isinstance(event, DoneEvent):
            done = event
    wall_ms = (time.perf_counter() - started) * 1000
    if done is None:
        raise RuntimeError(f"generation for {item.id} ended without a done event")
    verdict = judge.judge(done.text)
    record: dict[str, Any] = {
        "text": done.text,
        "judge": verdict.label,
        "judge_match": verdict.matched,
        "complies": verdict.complies,
        "completion_tokens": done.usage.completion_tokens,
        "generated_tokens": max(0, done.usage.completion_tokens - prefill_len),
        "wall_ms": round(wall_ms, 1),
    }
    if guarded:
        stage = intercept.stage if intercept is not None else None
        record.update(
            {
                "intercepted": intercept is not None,
                "intercept_stage": stage,
                # Released response tokens before the cut (the prefill counts once released).
                "intercept_index": intercept.index if intercept is not None else None,
                # Tokens the model itself had generated when the guard acted.
                "generated_before_cut": (
                    0 if stage == "prompt" else max(0, int(seen_at_cut or 0) - prefill_len)
                )
                if intercept is not None
                else None,
                "intercept_ms": round(intercept_ms, 1) if intercept_ms is not None else None,
                "intercept_score": round(intercept.score, 5) if intercept is not None else None,
                "checks": done.usage.checks,
                "scores": scores,
            }
        )
    return record


def evaluate_item(
    guard: Any,
    item: EvalItem,
    *,
    max_new_tokens: int,
    judge: RefusalJudge,
    prefills: PrefillCache,
    prompt_scores: dict[str, float],
) -> dict[str, Any]:
    """Guarded and unguarded runs of one item (same seed), plus the prompt check's score."""
    prefill, prefill_len, padding_refuses = prefills.prefill_for(guard, item)
    if item.prompt not in prompt_scores:
        prompt_scores[item.prompt] = float(guard.check_prompt(item.prompt).score)
    guarded = _generate(guard, item, prefill, max_new_tokens, True, judge, prefill_len)
    unguarded = _generate(guard, item, prefill, max_new_tokens, False, judge, prefill_len)
    record = item.to_dict()
    record.update(
        {
            "prefill": prefill,
            "prefill_len": prefill_len,
            "prefill_padding_refuses": padding_refuses,
            "prompt_score": round(prompt_scores[item.prompt], 5),
            "threshold": guard.config.threshold,
            "guarded": guarded,
            "unguarded": unguarded,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    return record


def run_items(
    guard: Any,
    items: list[EvalItem],
    out_dir: str | Path,
    *,
    max_new_tokens: int = 48,
    judge: RefusalJudge | None = None,
    progress: bool = True,
    fresh: bool = False,
    meta: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every item not already in `out_dir`; return the records of `items`, in order."""
    out = Path(out_dir)
    judge = judge or RefusalJudge()
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if fresh:
        discard_run(out)
    run_meta = {
        **guard_fingerprint(guard),
        "max_new_tokens": max_new_tokens,
        "judge": judge.name,
        "host": platform.node(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(meta or {}),
    }
    check_run(out, run_meta)
    store = ResultStore(out / RESULTS_FILE)
    done = store.load()
    prefills = PrefillCache(out / PREFILLS_FILE, judge)
    prompt_scores = {r["prompt"]: float(r["prompt_score"]) for r in done.values() if "prompt_score" in r}
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate item ids in the selection")
    pending = [item for item in items if item.id not in done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(items), initial=len(items) - len(pending), desc="eval", unit="item", dynamic_ncols=True
        )
    try:
        for item in pending:
            if bar is not None:
                bar.set_postfix_str(f"{item.suite}/{item.attack}", refresh=False)
            record = evaluate_item(
                guard,
                item,
                max_new_tokens=max_new_tokens,
                judge=judge,
                prefills=prefills,
                prompt_scores=prompt_scores,
            )
            store.append(record)
            done[item.id] = record
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [done[i] for i in ids if i in done]


def load_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """All finished records in a run folder, in the order they were written."""
    return list(ResultStore(Path(out_dir) / RESULTS_FILE).load(repair=False).values())
