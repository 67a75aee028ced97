"""Moderation sessions for another model's stream: create, feed chunks, close, delete."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter

from guardrail.model.prompts import to_messages
from guardrail.server.errors import APIError
from guardrail.server.moderation import SessionClosedError, SteppedSession
from guardrail.server.routes.common import SESSION_ERRORS
from guardrail.server.schemas import ChunkRequest, SessionCreated, SessionCreateRequest, SessionDeleted
from guardrail.server.state import ServerState, StateDep
from guardrail.types import ChunkVerdict

router = APIRouter(tags=["sessions"])
log = logging.getLogger("guardrail.server")


@router.post("/v1/sessions", response_model=SessionCreated, status_code=201, responses=SESSION_ERRORS)
async def create_session(body: SessionCreateRequest, state: StateDep) -> SessionCreated:
    """Prefill the prompt into a KV cache kept on the server; returns the prompt's verdict."""
    batcher, store = state.require()
    to_messages(body.conversation)
    config = state.config_for(body.config)
    await state.prompt_ids(body.conversation)  # 413 over the prompt budget, before any model work
    batcher.admit()
    session = SteppedSession(batcher, state.text, config)
    verdict = await session.start(body.conversation)
    entry = store.add(session)
    state.metrics.verdict_seconds.observe(verdict.latency_ms / 1000, kind="session_prompt")
    log.debug("session %s prompt=%s", entry.id, state.text_for_log(body.conversation))
    return SessionCreated(id=entry.id, prompt=verdict, config=config, ttl_s=store.ttl_s)


async def _run(state: ServerState, session_id: str, closing: bool, text: str = "") -> ChunkVerdict:
    batcher, store = state.require()
    entry = store.get(session_id)
    session = entry.session
    if not session.closed:  # a closed session answers 409 below, whatever its length
        await state.within_session_limit(session, text, closing=closing)
    batcher.admit()
    started = time.perf_counter()
    # Shielded: a client that disconnects mid-chunk must not leave the session half-advanced.
    work = session.close() if closing else session.feed(text)
    try:
        verdict = await asyncio.shield(work)
    except SessionClosedError as exc:
        raise APIError(409, f"session {session_id}: {exc}", code="session_closed") from exc
    entry.chunks += 1
    store.enforce_memory(keep=session_id)
    state.metrics.verdict_seconds.observe(time.perf_counter() - started, kind="chunk")
    if verdict.intercepted and not entry.info.get("counted"):
        entry.info["counted"] = "1"
        state.metrics.intercepts.inc(source="session")
    return verdict


@router.post("/v1/sessions/{session_id}/chunks", response_model=ChunkVerdict, responses=SESSION_ERRORS)
async def feed_chunk(session_id: str, body: ChunkRequest, state: StateDep) -> ChunkVerdict:
    """Append a chunk; the verdict says which text is now safe to show (`released`)."""
    log.debug("session %s chunk=%s", session_id, state.text_for_log(body.text))
    return await _run(state, session_id, False, body.text)


@router.post("/v1/sessions/{session_id}/close", response_model=ChunkVerdict, responses=SESSION_ERRORS)
async def close_session(session_id: str, state: StateDep) -> ChunkVerdict:
    """End of the stream: check and release the tail; the KV cache is freed."""
    return await _run(state, session_id, True)


@router.delete("/v1/sessions/{session_id}", response_model=SessionDeleted, responses=SESSION_ERRORS)
async def delete_session(session_id: str, state: StateDep) -> SessionDeleted:
    """Forget the session and free its memory; deleting twice gives 404."""
    _, store = state.require()
    if not store.remove(session_id):
        raise APIError(404, f"session {session_id} not found", code="session_not_found")
    return SessionDeleted(id=session_id)
