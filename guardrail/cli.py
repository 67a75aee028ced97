"""The `guardrail` command line: check, generate, train, serve, eval, info."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from guardrail.types import GuardConfig


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="local Hugging Face model folder (default: SmolLM2-135M)"
    )
    parser.add_argument("--head", default=None, help="safety head folder (default: the shipped head)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: per device)")
    parser.add_argument("--quantize", choices=["auto", "none", "int8"], default="auto",
                        help="auto (default): int8 on a CPU in fp32, none elsewhere; none: fp32 everywhere; "
                             "int8: the int8 CPU path (model card)")
    parser.add_argument("--threshold", type=float, default=None, help="unsafe score threshold")


def _add_policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", choices=["each", "first", "periodic", "annealing"], default=None)
    parser.add_argument("--period", type=int, default=None, help="check every N tokens (periodic)")
    parser.add_argument("--tau", type=int, default=None, help="consecutive unsafe checks before acting")
    parser.add_argument("--hold-back", type=int, default=None, help="tokens withheld after a safe check")
    parser.add_argument("--action", choices=["refuse", "stop"], default=None)
    parser.add_argument("--window", type=int, default=None, help="[CLS] sees only the last N response tokens")


def _guard(args: argparse.Namespace) -> Any:
    from guardrail.guard import Guard

    backend = getattr(args, "backend", None)
    guard = Guard(backend=backend) if backend else Guard(args.model, args.head, device=args.device,
                                                         dtype=args.dtype, quantize=args.quantize)
    updates = {
        key: getattr(args, key, None)
        for key in ("threshold", "strategy", "period", "tau", "hold_back", "action", "window")
    }
    updates = {k: v for k, v in updates.items() if v is not None}
    if updates:
        guard.config = GuardConfig.model_validate(guard.config.model_dump() | updates)
    return guard


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Validate the whole file before any output is written."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    rows = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8", errors="strict"))
        except UnicodeDecodeError as exc:
            raise CliError(f"{path}:{number}: invalid UTF-8 at byte {exc.start}") from exc
        except json.JSONDecodeError as exc:
            raise CliError(f"{path}:{number}: malformed JSON: {exc.msg}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str | list):
            raise CliError(f'{path}:{number}: expected an object with a "prompt" string or messages')
        if "response" in row and row["response"] is not None and not isinstance(row["response"], str):
            raise CliError(f'{path}:{number}: "response" must be a string')
        rows.append((number, row))
    if not rows:
        raise CliError(f"{path}: no input lines")
    return iter(rows)


class _AtomicOutput:
    """Write to a temporary file and move it in place only when everything succeeded."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._tmp: Any = None

    def __enter__(self) -> TextIO:
        if self.path is None:
            return sys.stdout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.NamedTemporaryFile(
            "w", dir=self.path.parent, prefix=f".{self.path.name}.", delete=False, encoding="utf-8"
        )
        return self._tmp  # type: ignore[no-any-return]

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._tmp is None:
            return
        self._tmp.close()
        if exc_type is None:
            os.replace(self._tmp.name, self.path)  # type: ignore[arg-type]
        else:
            os.unlink(self._tmp.name)


def cmd_check(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.input is None):
        raise CliError("give either TEXT or --input FILE.jsonl")
    if args.batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    rows = (
        list(_read_jsonl(Path(args.input)))
        if args.input
        else [(1, {"prompt": args.text, "response": args.response})]
    )
    guard = _guard(args)
    with _AtomicOutput(args.output) as out:
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start : start + args.batch_size]
            for verdict in _check_rows(guard, batch, args.input):
                out.write(json.dumps(verdict.model_dump()) + "\n")
    return 0


def _check_rows(guard: Any, rows: list[tuple[int, dict[str, Any]]], source: str | None) -> list[Any]:
    """Verdicts for one group of lines, in their order.

    A guard with batch methods (`check_prompts`, `check_responses`: one request or one batched
    pass for the group) gets the group at once; otherwise each line is checked in turn. A
    failing group is re-checked line by line, so the error names its line.
    """
    from guardrail.model.prompts import InputError

    pairs = [i for i, (_, row) in enumerate(rows) if row.get("response")]
    prompts = [i for i, (_, row) in enumerate(rows) if not row.get("response")]
    batched_prompts = getattr(guard, "check_prompts", None)
    batched_pairs = getattr(guard, "check_responses", None)
    if len(rows) > 1 and callable(batched_prompts) and callable(batched_pairs):
        verdicts: list[Any] = [None] * len(rows)
        try:
            if prompts:
                for i, verdict in zip(prompts, batched_prompts([rows[i][1]["prompt"] for i in prompts]),
                                      strict=True):
                    verdicts[i] = verdict
            if pairs:
                items = [(rows[i][1]["prompt"], rows[i][1]["response"]) for i in pairs]
                for i, verdict in zip(pairs, batched_pairs(items), strict=True):
                    verdicts[i] = verdict
            return verdicts
        except (InputError, ValueError):
            pass  # find the line below
    results = []
    for number, row in rows:
        try:
            if row.get("response"):
                results.append(guard.check_response(row["prompt"], row["response"]))
            else:
                results.append(guard.check_prompt(row["prompt"]))
        except (InputError, ValueError) as exc:
            where = f"{source}:{number}: " if source else ""
            raise CliError(f"{where}{exc}") from exc
    return results


def cmd_generate(args: argparse.Namespace) -> int:
    guard = _guard(args)
    from guardrail.types import DoneEvent, InterceptEvent, ScoreEvent, TokenEvent

    kwargs: dict[str, Any] = dict(
        max_new_tokens=args.max_new_tokens,
        prefill=args.prefill,
        guard=not args.no_guard,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    if args.json:
        print(guard.generate_text(args.prompt, **kwargs).model_dump_json())
        return 0
    if args.prefill:
        sys.stdout.write(f"[prefill] {args.prefill}")
    for event in guard.generate(args.prompt, **kwargs):
        if isinstance(event, TokenEvent):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, ScoreEvent) and args.verbose:
            sys.stderr.write(f"\n[check @{event.index}: {event.score:.3f}]")
        elif isinstance(event, InterceptEvent):
            sys.stdout.write(
                f"\n[intercepted at token {event.index}: score {event.score:.3f}, {event.action}]\n"
            )
        elif isinstance(event, DoneEvent):
            sys.stdout.write("\n")
    return 0


def _default_load() -> dict[str, Any]:
    """What `Guard()` and `guardrail serve` load here with their defaults (quantize="auto", CPU)."""
    import torch

    from guardrail.model.loading import DEFAULT_MODEL_NAME, resolve_head_dir
    from guardrail.model.quantize import resolve_quantize
    from guardrail.model.smoothing import shipped_scales

    mode = resolve_quantize("auto", "cpu", torch.float32)
    head_dir = resolve_head_dir(None, mode)
    loads: dict[str, Any] = {"quantize": mode, "head_dir": str(head_dir)}
    if mode == "int8":
        loads["smoothing"] = shipped_scales(DEFAULT_MODEL_NAME) is not None
    if (head_dir / "head.json").is_file():
        loads["threshold"] = json.loads((head_dir / "head.json").read_text()).get("threshold")
    return {"default_load": loads}


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from guardrail.model.head import default_head_dir
    from guardrail.model.loading import cache_dir

    info: dict[str, Any] = {
        "version": __import__("guardrail").__version__,
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "cache_dir": str(cache_dir()),
        "default_head": str(default_head_dir()),
    }
    head_json = default_head_dir() / "head.json"
    if head_json.is_file():
        info["head"] = json.loads(head_json.read_text())
    info |= _default_load()
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardrail", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="classify a prompt (and response) as safe or unsafe")
    check.add_argument("text", nargs="?", help="the prompt to check")
    check.add_argument("--response", default=None, help="a response to check with the prompt")
    check.add_argument("--input", default=None, help='JSONL file of {"prompt", "response"?} lines')
    check.add_argument("--output", default=None, help="write JSONL here (default: stdout)")
    check.add_argument("--batch-size", type=int, default=16,
                       help="lines checked together (one batched request to a sidecar)")
    check.add_argument("--backend", default=None, metavar="URL",
                       help="check through a running sidecar (guardrail serve) instead of a local model")
    _add_model_args(check)
    check.set_defaults(func=cmd_check)

    gen = sub.add_parser("generate", help="guarded generation with strategic decoding")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--prefill", default=None, help="pre-fill the assistant turn (prefill attack)")
    gen.add_argument("--no-guard", action="store_true", help="plain decoding, for comparison")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--json", action="store_true", help="print one JSON result")
    gen.add_argument("--verbose", action="store_true", help="print each check's score to stderr")
    _add_model_args(gen)
    _add_policy_args(gen)
    gen.set_defaults(func=cmd_generate)

    info = sub.add_parser("info", help="versions, cache folder, shipped head and what the defaults load")
    info.set_defaults(func=cmd_info)

    for module, hook in (
        ("guardrail.training.cli", "add_train_command"),
        ("guardrail.server.cli", "add_serve_command"),
        ("guardrail.eval.cli", "add_eval_command"),
    ):
        try:
            register = getattr(__import__(module, fromlist=[hook]), hook)
        except (ImportError, AttributeError):
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"guardrail {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        from guardrail.model.loading import ModelLoadError
        from guardrail.model.prompts import InputError

        if not isinstance(exc, InputError | ModelLoadError | FileNotFoundError):
            raise
        print(f"guardrail {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
