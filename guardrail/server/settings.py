"""Server settings: one object built from the command line (or by tests) and read by every part."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from guardrail.types import CategoryRule


class Settings(BaseModel):
    """How the sidecar is bound, secured and bounded.

    Limits exist so one client cannot exhaust memory or the model worker for the others.
    """

    model: str | None = None
    head: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    quantize: Literal["auto", "none", "int8"] = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    upstream: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1")
    upstream_api_key: str | None = None
    upstream_timeout_s: float = 60.0
    api_key: str | None = None
    max_sessions: int = Field(256, ge=1)
    session_ttl_s: float = Field(300.0, gt=0)
    max_session_memory_mb: float = Field(2048.0, gt=0, description="Bound on all sessions' KV caches.")
    max_batch: int = Field(16, ge=1)
    max_wait_ms: float = Field(2.0, ge=0)
    max_queue: int = Field(256, ge=1, description="Pending model steps before new work gets 429.")
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_new_tokens: int = Field(1024, ge=1, description="Upper bound on a generation's length.")
    max_session_tokens: int = Field(32768, ge=1, description="Response tokens one session may receive "
                                    "(checked before each chunk and at close, before any model work).")
    max_prompt_tokens: int = Field(4096, ge=1, description="Tokens a request's prompt may have; a longer "
                                   "one is refused (413), never cut, so nothing in it goes unchecked.")
    max_check_batch: int = Field(64, ge=1, description="Items one batched /v1/check may carry (413 above).")
    graceful_shutdown_s: float = Field(5.0, ge=0, description="On SIGTERM, seconds in-flight requests get "
                                       "before they are cancelled.")
    heap_trim_interval_s: float = Field(2.0, ge=0, description="Return freed heap memory to the OS at "
                                        "most this often (seconds; 0 turns it off).")
    allow_request_relaxation: bool = Field(False, description="Let a request's config make the guard "
                                           "laxer than the server's (higher threshold or tau, less "
                                           "hold-back, sparser checks, no prompt check).")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="The server's unsafe-score "
                                    "threshold (`guardrail serve --threshold`); None: the head's "
                                    "calibrated one. A request may only lower it.")
    category_rules: dict[str, CategoryRule] = Field(
        default_factory=dict, description="The server's per-category rules (`guardrail serve "
        "--category-rule NAME=ACTION[:THRESHOLD]`); a request may only make them stricter.")
    log_text: bool = False
    cors_origins: list[str] = Field(default_factory=list,
                                    description="Origins allowed to call from a browser; none by default.")
    model_name: str = "guardrail"
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names requests may be "
                                     "addressed to when no API key is set, besides the loopback names "
                                     "and the bound host ('*': any).")
    tracing: bool | None = Field(None, description="Server spans joined to the caller's W3C trace "
                                 "context; None: on when an OpenTelemetry SDK tracer provider is set.")

    def host_allow_list(self) -> list[str]:
        """The names a request may address without an API key: loopback, the bound host, extras."""
        return sorted({"127.0.0.1", "localhost", "::1", self.host, *self.allowed_hosts})

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Fill secrets from the environment, so they need not appear in a process listing."""
        values: dict[str, object] = {}
        if os.environ.get("GUARDRAIL_API_KEY"):
            values["api_key"] = os.environ["GUARDRAIL_API_KEY"]
        if os.environ.get("GUARDRAIL_UPSTREAM_API_KEY"):
            values["upstream_api_key"] = os.environ["GUARDRAIL_UPSTREAM_API_KEY"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


def parse_category_rule(text: str) -> tuple[str, CategoryRule]:
    """`NAME=ACTION[:THRESHOLD]` (e.g. `illicit/violent=block:0.4`) -> (name, rule); ValueError naming
    what is wrong. The name is checked against the head when the model is known."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name or not spec:
        raise ValueError(f"{text!r} is not NAME=ACTION[:THRESHOLD] (e.g. self-harm=flag, "
                         "illicit/violent=block:0.4)")
    action, colon, threshold = spec.partition(":")
    values: dict[str, object] = {"action": action.strip()}
    if colon:
        try:
            values["threshold"] = float(threshold)
        except ValueError:
            raise ValueError(f"{text!r}: threshold {threshold!r} is not a number in [0, 1]") from None
    try:
        return name, CategoryRule.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{text!r}: {problems} (actions: block, flag, allow; threshold in [0, 1])") from None
