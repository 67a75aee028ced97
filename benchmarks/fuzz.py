"""Fuzz the sidecar's whole HTTP surface against its own OpenAPI schema.

    python benchmarks/fuzz.py [--quick] [--json] [--cases 5000] [--seed 0]

A real `guardrail serve` process on a loopback port (a tiny random model by default, so the
run measures the API, not the head). Two kinds of cases:

- schema-driven (schemathesis): every operation in /openapi.json, valid and invalid bodies,
  headers, query strings and path parameters; each response is checked for a 5xx, an
  undocumented status, a wrong content type and a body that does not match the schema;
- hostile (hypothesis): oversized and deeply nested bodies, non-UTF-8 bytes, lone and split
  surrogates, integers far beyond int64, huge single tokens (one word of tens of thousands of
  characters), wrong content types and encodings, wrong methods, odd query strings and session
  ids, mangled keys; each must answer a 4xx that its route's schema documents, with a JSON
  error body, never a 5xx. A status counts as documented only if the operation's own OpenAPI
  entry lists it; a method or path the schema does not have may answer 404 or 405, or what the
  checks before routing answer (401 without the key, 413 over the body limit, 400 for a body
  that is not UTF-8), nothing else.

Figures: cases, server_errors (5xx), schema_violations, alive (the server still answers at
the end). Target: 0 and 0, alive true.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_reliability_support import Sidecar, tiny_model_dirs

KEY = "fuzz-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_BODY = 65536
#: What a request for an operation the schema does not have may answer: no such path or method,
#: or one of the checks that run before routing (API key 401, body size 413, invalid UTF-8 400),
#: which bound the work any request can cause.
NO_SUCH_OPERATION = {400, 401, 404, 405, 413}


class Tally:
    """Every case and every problem, with a few samples of each problem to reproduce it."""

    def __init__(self) -> None:
        self.cases = 0
        self.server_errors = 0
        self.schema_violations = 0
        self.kinds: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.samples: list[str] = []

    def problem(self, kind: str, detail: str) -> None:
        self.kinds[kind] += 1
        if kind == "server_error":
            self.server_errors += 1
        else:
            self.schema_violations += 1
        if len(self.samples) < 20:
            self.samples.append(f"{kind}: {detail[:400]}")


def run_schema_cases(url: str, budget: int, seed: int, tally: Tally, session_ids: list[str]) -> None:
    import schemathesis
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.core.failures import FailureGroup

    schema = schemathesis.openapi.from_url(url + "/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    per_round = max(1, budget // (len(operations) * len(modes)))
    round_ = 0
    while tally.cases < budget and round_ < 20:
        for operation in operations:
            for mode in modes:
                params = {"session_id": st.sampled_from(session_ids)} \
                    if "{session_id}" in operation.path and mode is modes[0] and session_ids else None
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=params) \
                    if params else operation.as_strategy(generation_mode=mode)
                wrapped = settings(max_examples=per_round, deadline=None, database=None,
                                   phases=[Phase.explicit, Phase.generate],
                                   suppress_health_check=list(HealthCheck))

                @wrapped
                @given(case=strategy)
                def one(case: Any) -> None:
                    if tally.cases >= budget:
                        return
                    tally.cases += 1
                    try:
                        response = case.call(base_url=url, headers=AUTH, timeout=60)
                    except Exception as exc:  # the transport failed: the server hung up on us
                        tally.problem("server_error", f"{case.method} {case.formatted_path}: {exc!r}")
                        return
                    tally.statuses[response.status_code] += 1
                    try:
                        case.validate_response(response, checks=checks)
                    except FailureGroup as group:
                        for failure in group.exceptions:
                            kind = "server_error" if response.status_code >= 500 else type(failure).__name__
                            tally.problem(kind, f"{case.method} {case.formatted_path} -> "
                                                f"{response.status_code}: {failure}")
                    except AssertionError as exc:
                        kind = "server_error" if response.status_code >= 500 else "check_failed"
                        tally.problem(kind, f"{case.method} {case.formatted_path}: {exc}")

                with contextlib.suppress(Unsatisfiable):  # e.g. no invalid input for a bare GET
                    hypothesis_seed(seed * 1000 + round_)(one)()
        round_ += 1


# -- hostile raw requests ------------------------------------------------------------------------------
PATHS = ["/v1/check", "/v1/generate", "/v1/sessions", "/v1/sessions/{id}/chunks", "/v1/sessions/{id}/close",
         "/v1/sessions/{id}", "/v1/chat/completions", "/healthz", "/readyz", "/metrics", "/openapi.json"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["prompt", "messages", "response", "config", "text", "max_new_tokens", "model", "stream",
          "guardrail", "temperature", "top_p", "seed", "max_tokens", "n", "prefill", "guard"]


def _nested(depth: int, kind: str) -> bytes:
    inner = "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth
    return ('{"prompt": ' + inner + "}").encode()


bodies = st.one_of(
    st.builds(lambda d: json.dumps(d).encode(),
              st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5)),
    st.builds(_nested, st.integers(50, 200_000), st.sampled_from(["list", "dict"])),
    st.binary(max_size=300),  # mostly not UTF-8, not JSON
    st.builds(lambda b: b'{"prompt": "' + b + b'"}', st.binary(min_size=1, max_size=50)),
    st.builds(lambda n: json.dumps({"prompt": "x" * n}).encode(), st.integers(MAX_BODY - 64, MAX_BODY * 4)),
    st.builds(lambda n: json.dumps({"text": "🙂" * n}).encode(), st.integers(1, MAX_BODY // 2)),
    st.just(b""), st.just(b"null"), st.just(b"[]"), st.just(b'"str"'), st.just(b"1e999999"),
    st.just(b'{"prompt": "\\ud800"}'), st.just(b'{"prompt": "a\\u0000b"}'),
    # lone surrogates and a pair split apart, in every text field
    st.builds(lambda field, escape: json.dumps({field: "x"}).replace('"x"', f'"a{escape}b"').encode(),
              st.sampled_from(["prompt", "text", "response", "prefill"]),
              st.sampled_from(["\\ud800", "\\udfff", "\\udc80\\ud83d", "\\ud83d", "\\ude00\\ud83d"])),
    st.just(b'{"messages": [{"role": "user", "content": "\\ud83d"}], "stream": true}'),
    # integers far beyond int64, in every integer field
    st.builds(lambda field, n: ('{"prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "'
                                + field + '": ' + str(n) + "}").encode(),
              st.sampled_from(["max_new_tokens", "seed", "max_tokens", "n", "temperature", "top_p"]),
              st.sampled_from([2**63, 2**64 + 1, -(2**63) - 1, 10**30, -(10**40), 10**4000])),
    st.builds(lambda field, n: json.dumps({"prompt": "hi", "config": {field: n}}).encode(),
              st.sampled_from(["period", "tau", "hold_back", "window", "threshold"]),
              st.sampled_from([2**63, 10**30, -(10**30)])),
    # huge single tokens: one word with no space to cut at
    st.builds(lambda field, n, ch: json.dumps({field: ch * n}).encode(),
              st.sampled_from(["prompt", "text", "response"]), st.integers(1000, MAX_BODY // 2 - 64),
              st.sampled_from(["a", "x1", "\u00e9", "\u200b", "9"])),
)
headers = st.fixed_dictionaries({}, optional={
    "content-type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     "multipart/form-data; boundary=zz", "application/json; charset=latin-1",
                                     "garbage/\u00e9".encode("utf-8").decode("latin-1")]),
    "content-encoding": st.sampled_from(["gzip", "deflate", "br", "identity"]),
    "x-request-id": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=100),
    "accept": st.sampled_from(["*/*", "text/event-stream", "application/xml"]),
})
auths = st.sampled_from([AUTH, AUTH, AUTH, {}, {"authorization": "Bearer"},
                         {"authorization": "Bearer " + "k" * 4000}, {"authorization": "Basic Zm9vOmJhcg=="},
                         {"authorization": f"bearer {KEY}"}])
session_ids = st.one_of(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF,
                                              exclude_characters="/?#%"), min_size=1, max_size=80),
                        st.just("sess_" + "a" * 3000), st.just(".."), st.just("%2e%2e"), st.just("%00"))
queries = st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=3)
methods = st.sampled_from(["POST", "POST", "POST", "GET", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"])


def documented(spec: dict[str, Any]) -> dict[tuple[str, str], set[int]]:
    out = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            out[(method.upper(), path)] = {int(s) for s in op.get("responses", {}) if s.isdigit()}
    return out


def run_raw_cases(url: str, budget: int, seed: int, tally: Tally, real_ids: list[str]) -> None:
    spec = httpx.get(url + "/openapi.json", headers=AUTH, timeout=30).json()
    known = documented(spec)
    client = httpx.Client(base_url=url, timeout=60)
    done = [0]

    # A margin of examples: a request our own HTTP stack refuses to send is not a case.
    @settings(max_examples=budget + max(50, budget // 10), deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(method=methods, template=st.sampled_from(PATHS), sid=st.one_of(st.sampled_from(real_ids or ["x"]),
           session_ids), body=bodies, extra=headers, auth=auths, query=queries, chunked=st.booleans())
    def one(method: str, template: str, sid: str, body: bytes, extra: dict[str, str], auth: dict[str, str],
            query: dict[str, str], chunked: bool) -> None:
        if done[0] >= budget:
            return
        done[0] += 1
        tally.cases += 1
        path = template.replace("{id}", urllib.parse.quote(sid, safe=""))
        content: Any = body
        if chunked:  # no content-length: the size limit must hold on a streamed body too
            content = iter([body[i : i + 4096] for i in range(0, len(body), 4096)] or [b""])
        try:
            raw = {"content-type": "application/json", **extra, **auth}
            response = client.request(method, path, content=content, params=query,
                                      headers={k.encode(): v.encode("latin-1") for k, v in raw.items()})
            response.read()
        except httpx.LocalProtocolError:  # refused by our own HTTP stack, never sent
            done[0] -= 1
            tally.cases -= 1
            return
        except httpx.HTTPError as exc:
            tally.problem("server_error", f"{method} {path}: transport {exc!r}")
            return
        status = response.status_code
        tally.statuses[status] += 1
        if status >= 500:
            tally.problem("server_error", f"{method} {template} -> {status}: {response.text[:200]}")
            return
        route = template.replace("{id}", "{session_id}")
        allowed = known.get((method, route), NO_SUCH_OPERATION)
        if method == "HEAD" or status < 400:
            if status not in allowed and status != 200:
                tally.problem("undocumented_status", f"{method} {template} -> {status}")
            return
        if status not in allowed:
            tally.problem("undocumented_status", f"{method} {template} -> {status}: {response.text[:200]}")
        try:
            error = response.json()["error"]
            assert isinstance(error["message"], str) and error["message"]
            assert isinstance(error["type"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            tally.problem("error_body_shape", f"{method} {template} -> {status}: {response.text[:200]}")

    hypothesis_seed(seed)(one)()
    client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~300 cases, for CI")
    p.add_argument("--json", action="store_true", help="print one JSON object with the figures last")
    p.add_argument("--cases", type=int, default=None, help="total cases (default 5000, 300 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model folder (default: a tiny random Llama)")
    p.add_argument("--head", default=None)
    p.add_argument("--log", default=None, help="write the server's output here")
    args = p.parse_args()
    total = args.cases or (300 if args.quick else 5000)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="guardrail-fuzz-"))
    model, head = (Path(args.model), Path(args.head)) if args.model else tiny_model_dirs(work)
    tally = Tally()
    started = time.monotonic()
    server = Sidecar("--max-new-tokens", "8", "--max-body-bytes", str(MAX_BODY), "--max-sessions", "64",
                     model=model, head=head, env={"GUARDRAIL_API_KEY": KEY},
                     log_path=Path(args.log) if args.log else None)
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            ids = [c.post("/v1/sessions", json={"prompt": "fuzz"}).json()["id"] for _ in range(8)]
        run_schema_cases(server.url, int(total * 0.7), args.seed, tally, ids)
        run_raw_cases(server.url, total - tally.cases, args.seed, tally, ids)
        alive = server.proc is not None and server.proc.poll() is None
        try:
            alive = alive and httpx.get(server.url + "/healthz", timeout=10).status_code == 200 \
                and httpx.post(server.url + "/v1/check", json={"prompt": "still there?"}, headers=AUTH,
                               timeout=30).status_code == 200
        except httpx.HTTPError:
            alive = False
    finally:
        server.stop()
    figures = {"cases": tally.cases, "server_errors": tally.server_errors,
               "schema_violations": tally.schema_violations, "alive": alive}
    if not args.json or tally.samples:
        print(f"seconds: {time.monotonic() - started:.0f}")
        print("statuses:", dict(sorted(tally.statuses.items())))
        print("problems:", dict(tally.kinds))
        for sample in tally.samples:
            print("  ", sample)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    return 0 if tally.server_errors == 0 and tally.schema_violations == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
