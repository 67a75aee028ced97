"""`guardrail serve`: run the sidecar under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from guardrail.types import CategoryRule


def add_serve_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = subparsers.add_parser("serve", help="run the HTTP sidecar (checks, generation, sessions, proxy)")
    serve.add_argument("--model", default=None,
                       help="local Hugging Face model folder (default: SmolLM2-135M)")
    serve.add_argument("--head", default=None, help="safety head folder (default: the shipped head)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    serve.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: per device)")
    serve.add_argument("--quantize", choices=["auto", "none", "int8"], default="auto",
                       help="auto (default): int8 on a CPU in fp32, none elsewhere; none: fp32 everywhere; "
                            "int8: the int8 CPU path (model card)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--upstream", default=None,
                       help="OpenAI-compatible base URL to proxy chat completions to, e.g. http://127.0.0.1:8001/v1")
    serve.add_argument("--upstream-timeout", type=float, default=60.0,
                       help="seconds of upstream silence before a proxied stream ends with an error")
    serve.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' (default: $GUARDRAIL_API_KEY)")
    serve.add_argument("--max-sessions", type=int, default=256)
    serve.add_argument("--session-ttl", type=float, default=300.0,
                       help="idle seconds before a session expires")
    serve.add_argument("--max-batch", type=int, default=16, help="streams per batched forward pass")
    serve.add_argument("--max-wait-ms", type=float, default=2.0, help="longest wait to fill a batch")
    serve.add_argument("--max-queue", type=int, default=256, help="waiting steps before 429")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20)
    serve.add_argument("--max-new-tokens", type=int, default=1024,
                       help="upper bound on one generation's length (generate and chat)")
    serve.add_argument("--max-prompt-tokens", type=int, default=4096,
                       help="tokens a prompt may have; a longer one is refused with 413, never cut")
    serve.add_argument("--max-session-tokens", type=int, default=32768,
                       help="response tokens one moderation session may receive (413 above)")
    serve.add_argument("--max-check-batch", type=int, default=64,
                       help="items one batched /v1/check may carry (413 above)")
    serve.add_argument("--graceful-shutdown", type=float, default=5.0, metavar="SECONDS",
                       help="on SIGTERM, how long in-flight requests may finish before they are cancelled")
    serve.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                       help="allow browser requests from this origin (repeatable; default: no CORS)")
    serve.add_argument("--heap-trim-interval", type=float, default=2.0, metavar="SECONDS",
                       help="return freed heap memory to the OS at most this often (0: off)")
    serve.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                       help="without an API key, also accept requests addressed to this host name "
                            "(repeatable; loopback names and --host always are; '*': any)")
    serve.add_argument("--tracing", action=argparse.BooleanOptionalAction, default=None,
                       help="server spans joined to the caller's traceparent (default: on when an "
                            "OpenTelemetry SDK tracer provider is configured)")
    serve.add_argument("--allow-request-relaxation", action="store_true",
                       help="let a request's config make the guard laxer than the server's defaults "
                            "(by default a request may only make it stricter)")
    serve.add_argument("--threshold", type=_unit_interval, default=None, metavar="SCORE",
                       help="the server's unsafe-score threshold (default: the head's calibrated one; "
                            "docs/model-card.md#operating-points-the-threshold-rule-by-kind)")
    serve.add_argument("--category-rule", action="append", default=None, type=_category_rule,
                       metavar="NAME=ACTION[:THRESHOLD]",
                       help="the server's rule for one harm category (repeatable), e.g. self-harm=flag or "
                            "illicit/violent=block:0.4; ACTION is block, flag or allow, THRESHOLD "
                            "defaults to the head's calibrated one (docs/categories.md)")
    serve.add_argument("--log-text", action="store_true",
                       help="log prompt and response text (off by default)")
    serve.add_argument("--log-level", default="info")
    scale = serve.add_argument_group("scale-out (Ray Serve; needs the 'ray' extra)")
    scale.add_argument("--backend", choices=("uvicorn", "ray"), default="uvicorn",
                       help="uvicorn: one process; ray: N model replicas behind one endpoint")
    scale.add_argument("--replicas", type=int, default=1, help="model replicas (ray backend)")
    scale.add_argument("--min-replicas", type=int, default=None, help="autoscale down to this many")
    scale.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many")
    scale.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per model replica")
    scale.add_argument("--replica-gpus", type=float, default=None,
                       help="GPUs per model replica (default: 1 with a cuda device, else 0)")
    scale.add_argument("--ray-address", default=None,
                       help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local one)")
    serve.set_defaults(func=cmd_serve)


def _unit_interval(text: str) -> float:
    """argparse type of --threshold: a number in [0, 1], or a usage error naming the value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is outside [0, 1]")
    return value


def _category_rule(text: str) -> tuple[str, CategoryRule]:
    """argparse type of --category-rule: a clear usage error for a malformed value."""
    from guardrail.server.settings import parse_category_rule

    try:
        return parse_category_rule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def category_rules(pairs: list[tuple[str, CategoryRule]] | None, head: str | None) -> dict[str, CategoryRule]:
    """The --category-rule values by name, checked against the head's category names.

    A name given twice, or one the head does not score, is an `InputError` before the server starts.
    """
    from guardrail.model.prompts import InputError

    rules: dict[str, CategoryRule] = {}
    for name, rule in pairs or []:
        if name in rules:
            raise InputError(f"--category-rule {name} is given twice")
        rules[name] = rule
    if rules:
        from guardrail.model.check import validate_categories
        from guardrail.model.head import SafetyHead, default_head_dir

        names = SafetyHead.load(Path(head) if head else default_head_dir()).category_names
        validate_categories(rules, names, field="--category-rule")
    return rules


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from guardrail.server.app import create_app
    from guardrail.server.settings import Settings

    rules = category_rules(getattr(args, "category_rule", None), args.head)

    settings = Settings.from_env(
        model=args.model, head=args.head, device=args.device, dtype=args.dtype, quantize=args.quantize,
        host=args.host,
        port=args.port, upstream=args.upstream, upstream_timeout_s=args.upstream_timeout,
        api_key=args.api_key or os.environ.get("GUARDRAIL_API_KEY"),
        max_sessions=args.max_sessions, session_ttl_s=args.session_ttl, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
        max_new_tokens=args.max_new_tokens, log_text=args.log_text, cors_origins=args.cors_origin,
        heap_trim_interval_s=args.heap_trim_interval,
        allow_request_relaxation=getattr(args, "allow_request_relaxation", False),
        max_prompt_tokens=getattr(args, "max_prompt_tokens", None),
        max_session_tokens=getattr(args, "max_session_tokens", None),
        max_check_batch=getattr(args, "max_check_batch", None),
        graceful_shutdown_s=getattr(args, "graceful_shutdown", None),
        allowed_hosts=getattr(args, "allowed_host", None), tracing=getattr(args, "tracing", None),
        category_rules=rules or None, threshold=getattr(args, "threshold", None),
    )
    level = getattr(logging, args.log_level.upper(), logging.INFO)
    logging.basicConfig(level=logging.DEBUG if args.log_text else level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        logging.getLogger("guardrail.server").warning(
            "listening on %s without an API key; anyone who can reach it can use it", settings.host)
    if getattr(args, "backend", "uvicorn") == "ray":
        from guardrail.server.ray_cli import serve_on_ray  # imports ray; only on this path

        return serve_on_ray(args, settings)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=args.log_level, access_log=args.log_text,
                timeout_graceful_shutdown=max(1, round(settings.graceful_shutdown_s)))
    return 0
