"""Real processes for the fault tests, the fuzzer and the soak (no tests here).

The sidecar runs as `python -m guardrail.cli serve` in its own process, so a SIGKILL, a
restart or a leak is the real thing. By default it loads a tiny random Llama saved to a
folder (seconds to start, deterministic mechanics); verdict labels come from the config
(threshold 0.0 flags everything, 1.0 nothing), never from what the random head thinks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
FLAG_ALL = {"threshold": 0.0, "tau": 1, "hold_back": 0}
FLAG_NONE = {"threshold": 1.0, "tau": 1, "hold_back": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_model_dirs(root: Path) -> tuple[Path, Path]:
    """A tiny random Llama (with the default tokenizer) and a head for it, saved once under root."""
    model_dir, head_dir = root / "tiny-model", root / "tiny-head"
    if (model_dir / "config.json").is_file() and (head_dir / "head.json").is_file():
        return model_dir, head_dir
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from guardrail.model.head import HeadConfig, SafetyHead
    from guardrail.model.loading import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
    )
    lm = LlamaForCausalLM(config).eval()
    head = SafetyHead(HeadConfig(hidden_size=32, num_layers=2, adapter_rank=4, classifier_hidden=16))
    with torch.no_grad():
        head.init_cls_from(lm.get_input_embeddings().weight)
    staging = root / f".staging-{os.getpid()}"
    lm.save_pretrained(staging / "m")
    tokenizer.save_pretrained(staging / "m")
    head.save(staging / "h")
    (staging / "m").rename(model_dir)
    (staging / "h").rename(head_dir)
    staging.rmdir()
    return model_dir, head_dir


class Sidecar:
    """`guardrail serve` as a child process on a loopback port; `kill()` is a real SIGKILL."""

    def __init__(self, *args: str, model: Path | None = None, head: Path | None = None,
                 port: int | None = None, env: dict[str, str] | None = None,
                 log_path: Path | None = None, relaxable: bool = True) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args)
        self.model, self.head = model, head
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = log_path
        self.relaxable = relaxable  # labels here are pinned by lax configs (threshold 1.0, hold-back 0)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "guardrail.cli", "serve", "--port", str(self.port)]
        if self.model is not None:
            cmd += ["--model", str(self.model)]
        if self.head is not None:
            cmd += ["--head", str(self.head)]
        if self.relaxable:
            cmd.append("--allow-request-relaxation")
        return cmd + self.args

    def start(self, ready_timeout: float = 120.0) -> Sidecar:
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        headers = {"authorization": f"Bearer {self.env['GUARDRAIL_API_KEY']}"} \
            if self.env.get("GUARDRAIL_API_KEY") else {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode} before it was ready")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2, headers=headers).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("sidecar was not ready in time")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mb(self) -> float:
        """Resident memory of the server process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no goodbye to open connections."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    def __enter__(self) -> Sidecar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def metric(url: str, name: str, headers: dict[str, str] | None = None) -> float:
    """One unlabelled sample from the sidecar's Prometheus text."""
    for line in httpx.get(url + "/metrics", headers=headers or {}, timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- a scripted upstream on a raw socket, so it can misbehave at the byte level -------------------
def sse_chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {"id": "up", "object": "chat.completion.chunk", "created": 0, "model": "up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


class RawUpstream:
    """A loopback HTTP/1.1 server whose streamed answer is a list of raw byte pieces.

    `script` maps the request body to the pieces. `None` in the list means "stall until
    the connection is closed"; `b"<close>"` drops the connection mid-body. Each answer is
    chunked, so the proxy reads it as a stream.
    """

    def __init__(self, script: Callable[[dict[str, Any]], list[bytes | None]], delay_s: float = 0.01) -> None:
        self.script = script
        self.delay_s = delay_s
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                part = conn.recv(65536)
                if not part:
                    return
                data += part
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            self.requests += 1
            try:
                pieces = self.script(json.loads(body))
            except ValueError:
                pieces = []
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
            for piece in pieces:
                if piece is None:
                    while not self._stop.wait(0.1):
                        try:
                            conn.send(b"")
                        except OSError:
                            return
                    return
                if piece == b"<close>":
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                time.sleep(self.delay_s)
                try:
                    conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                except OSError:
                    return
            with contextlib.suppress(OSError):
                conn.sendall(b"0\r\n\r\n")

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def sidecar(*args: str, **kwargs: Any) -> Iterator[Sidecar]:
    with Sidecar(*args, **kwargs) as running:
        yield running
