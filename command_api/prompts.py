"""Accepting a prompt: idempotency, context composition, admission, the append.

The order is deliberate. An idempotent replay is answered before anything else (it must
not wait or count). A continuation waits for the conversation's last completion before it
is admitted. Admission (rate limit, concurrency cap, conversation ownership and optimistic
concurrency) is one atomic Postgres call; the event is appended after it and the admission
is revoked if Kafka does not ack, so a 503 costs the user nothing.

An Idempotency-Key's row names its request, and holds its encoded event, before the
admission; so a retry after its process failed anywhere past the admission (before
Kafka's ack, or between the ack and marking the key done) answers that same request and
appends that same event (same event_id, same request_id, stamped at its original time):
in the log once, or twice where the first append had landed, which every consumer folds
as the one prompt it is (at-least-once delivery). It never becomes a second prompt, and an
accepted prompt never stays unsent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from command_api import ratelimit
from command_api.errors import ConversationBusy, IdempotencyInProgress, IdempotencyKeyReused
from command_api.eventlog import EventLog
from command_api.metrics import Metrics
from command_api.quota import check_token_quota
from command_api.readmodel import ReadModel, compose
from command_api.settings import CommandSettings
from command_api.store import Admission, CommandStore, body_hash
from command_api.validation import PromptRequest, check_text
from infra.http import BadRequest, NotFound, RateLimited, Unauthorized
from schemas import ChatMessage, PromptSubmitted
from schemas.codec import decode, encode
from schemas.events import Branch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Branching:
    """A regenerate (another answer to `sibling_of`'s user message) or an edit (`content`
    as a new user message beside it): a new request under `sibling_of`'s parent."""

    branch: Branch
    sibling_of: str
    content: str | None = None


Placed = tuple[str, str | None, str | None, tuple[ChatMessage, ...], Branching | None]


@dataclass(frozen=True)
class Accepted:
    """An accepted (or idempotently replayed) prompt."""

    request_id: str
    conversation_id: str
    model: str
    created: int
    rate_headers: dict[str, str]
    replayed: bool = False
    user_id: str | None = None  # the caller, as admission resolved it

    @property
    def stream_url(self) -> str:
        return f"/v1/chat/completions/{self.request_id}/stream"

    def body(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "object": "chat.completion.request",
            "created": self.created,
            "model": self.model,
            "conversation_id": self.conversation_id,
            "status": "queued",
            "stream_url": self.stream_url,
        }


def canonical_hash(raw: bytes) -> str:
    """Hash of the body's JSON value, so key order and spacing do not make it 'different'."""
    return body_hash(json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode())


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def new_conversation_id() -> str:
    return f"conv-{uuid.uuid4().hex}"


class PromptService:
    def __init__(
        self,
        settings: CommandSettings,
        store: CommandStore,
        read_model: ReadModel,
        log: EventLog,
        metrics: Metrics,
        gate: Callable[[str], None] | None = None,
    ) -> None:
        self._s = settings
        self._store = store
        self._read = read_model
        self._log = log
        self._metrics = metrics
        self._gate = gate  # the model's breaker (command_api.availability): raises 503

    async def submit(
        self,
        *,
        user_id: str | None,
        key_hash: str = "",
        prompt: PromptRequest,
        raw: bytes,
        idempotency_key: str | None,
        traceparent: str,
        branching: Branching | None = None,
    ) -> Accepted:
        """Accept a prompt (or replay the one accepted under the same Idempotency-Key).

        `user_id` may be None (the caller's key not cached) only for a new conversation
        without Idempotency-Key: admission then resolves `key_hash` in the same round trip.
        The model's breaker and the user's token quota may refuse a NEW prompt
        (`_may_start`); a replay is answered whatever they say, since that prompt was
        accepted already (a client retrying it during an outage must learn its request id,
        not get a 503 and give up on it).
        """
        request_id = new_request_id()
        if idempotency_key is None:
            await self._may_start(user_id, prompt.model)
            return await self._accept(
                user_id, key_hash, prompt, request_id, None, traceparent, branching
            )
        if user_id is None:
            raise ValueError("an Idempotency-Key needs the caller resolved first")
        if len(idempotency_key) > 255:
            raise BadRequest("Idempotency-Key over 255 characters.", param="Idempotency-Key")
        check_text(idempotency_key, "Idempotency-Key")
        digest = canonical_hash(raw)
        existing = await self._store.claim_key(user_id, idempotency_key, digest, request_id)
        if existing is not None:
            if not existing.matches:
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was used with a different request body."
                )
            if existing.done and existing.response is not None:
                r = existing.response
                return Accepted(
                    r["id"], r["conversation_id"], r["model"], r["created"], {}, replayed=True
                )
            if existing.stale and existing.admitted is not None:
                # Its process failed after admission, maybe before Kafka's ack: append its
                # own event (again), answer that request; a new one would run it twice.
                if existing.event is not None:
                    await self._log.append(decode(*existing.event))
                conversation_id, admitted_at = existing.admitted
                accepted = Accepted(
                    existing.request_id,
                    conversation_id,
                    prompt.model,  # the same body (`matches`), so the same model
                    int(admitted_at.timestamp()),
                    {},
                    replayed=True,
                )
                await self._complete(user_id, idempotency_key, accepted)
                return accepted
            raise IdempotencyInProgress(
                "A request with this Idempotency-Key is still in progress; retry shortly.",
                headers={"Retry-After": "1"},
            )
        try:
            await self._may_start(user_id, prompt.model)
            accepted = await self._accept(
                user_id, key_hash, prompt, request_id, idempotency_key, traceparent, branching
            )
        except BaseException:
            await asyncio.shield(self._store.release_key(user_id, idempotency_key, request_id))
            raise
        await self._complete(user_id, idempotency_key, accepted)
        return accepted

    async def _may_start(self, user_id: str | None, model: str) -> None:
        """Every route's new prompts pass here: chat completions, Responses, regenerate and
        edit. 503 `model_unavailable` while the model's breaker is open; 429
        `insufficient_quota` once the user's metered tokens today reach the quota."""
        if self._gate is not None:
            self._gate(model)
        quota = self._s.token_quota_per_day
        if quota > 0:
            if user_id is None:
                raise ValueError("a token quota needs the caller resolved first")
            await check_token_quota(self._store.pool, user_id, quota)

    async def _complete(self, user_id: str, key: str, accepted: Accepted) -> None:
        """Mark the key done. The event is in the log whatever happens here, so a failure
        is logged, not answered: the key stays pending, and a retry past the pending window
        finds its request admitted and answers it (`CommandStore.claim_key`)."""
        try:
            await asyncio.shield(self._store.complete_key(user_id, key, accepted.body()))
        except Exception:
            log.exception("marking Idempotency-Key of %s done failed", accepted.request_id)

    async def _accept(
        self,
        user_id: str | None,
        key_hash: str,
        prompt: PromptRequest,
        request_id: str,
        idempotency_key: str | None,
        traceparent: str,
        branching: Branching | None,
    ) -> Accepted:
        placed = await (
            self._context(user_id, prompt)
            if branching is None
            else self._branch_context(user_id, prompt, branching)
        )
        conversation_id, expected_last, parent, messages, branching = placed
        new = prompt.conversation_id is None
        size = sum(len(m.content.encode()) for m in messages)
        if size > self._s.max_event_bytes:
            raise BadRequest(
                "The context is too long for one event; start a new conversation.",
                param="conversation_id",
                code="context_too_long",
            )
        event = PromptSubmitted(
            request_id=request_id,
            conversation_id=conversation_id,
            user_id=user_id or "",  # resolved by the admission: see below
            model=prompt.model,
            messages=messages,
            params=prompt.params,
            parent_request_id=parent,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
            branch=branching.branch if branching else None,
            sibling_of=branching.sibling_of if branching else None,
        )
        if idempotency_key is not None and user_id is not None:
            await self._store.stash_event(user_id, idempotency_key, request_id, encode(event))
        admission = await self._store.admit(
            user_id=user_id,
            key_hash=key_hash,
            request_id=request_id,
            conversation_id=conversation_id,
            new_conversation=new,
            expected_last=expected_last,
        )
        self._refuse_unless_admitted(admission)
        user_id = admission.user_id
        if user_id is None:  # admitted means the caller was resolved
            raise RuntimeError("command.admit_prompt admitted an unknown caller")
        if event.user_id != user_id:
            event = dataclasses.replace(event, user_id=user_id)
        # Shielded: a client that goes away must not leave an admitted-but-unsent request.
        await asyncio.shield(self._append_or_revoke(event, new, expected_last))
        self._metrics.appended(event.event_type)
        return Accepted(
            request_id,
            conversation_id,
            prompt.model,
            int(time.time()),
            ratelimit.headers(admission.window),
            user_id=user_id,
        )

    async def _append_or_revoke(
        self, event: PromptSubmitted, new: bool, expected_last: str | None
    ) -> None:
        try:
            await self._log.append(event)
        except BaseException:
            await self._store.revoke(
                request_id=event.request_id,
                conversation_id=event.conversation_id,
                new_conversation=new,
                prev_last=expected_last,
            )
            raise

    async def _context(self, user_id: str | None, prompt: PromptRequest) -> Placed:
        """(conversation id, its last request, parent request, full context, None)."""
        if prompt.conversation_id is None:
            if prompt.parent_request_id is not None:
                raise BadRequest(
                    "parent_request_id needs a conversation_id.", param="parent_request_id"
                )
            return new_conversation_id(), None, None, prompt.messages, None
        if user_id is None:
            raise ValueError("a continuation needs the caller resolved first")
        conv = await self._store.conversation(prompt.conversation_id, user_id)
        if conv is None:
            raise NotFound("No such conversation.", param="conversation_id")
        parent = prompt.parent_request_id
        if parent is not None:
            owned = await self._store.request(parent, user_id)
            if owned is None or owned.conversation_id != conv.id:
                raise NotFound("No such request in this conversation.", param="parent_request_id")
        last = await self._wait_last(conv.last_request_id)
        if parent is None:
            parent = await self._current_leaf(conv.id, last)
        history = await self._read.history(conv.id, up_to_request=parent)
        return conv.id, last, parent, compose(history, prompt.messages), None

    async def _wait_last(self, last: str | None) -> str | None:
        """The conversation's last request, once it is terminal in the read model."""
        if last is not None and not await self._read.wait_terminal(
            last, self._s.continuation_wait_s
        ):
            raise ConversationBusy(
                "The conversation's previous completion is not finished yet; retry shortly.",
                param="conversation_id",
                headers={"Retry-After": "1"},
            )
        return last

    async def _current_leaf(self, conversation_id: str, last: str | None) -> str | None:
        """Where a plain continuation goes: the read model's current leaf (a BranchSwitched
        may have moved it) once the read model has folded the newest prompt, else that
        prompt (the read model lags behind the admission that knows it)."""
        leaf, newest = await self._read.leaf(conversation_id)
        return leaf if leaf is not None and newest == last else last

    async def _branch_context(
        self, user_id: str | None, prompt: PromptRequest, branching: Branching
    ) -> Placed:
        """A regenerate's or an edit's place: `sibling_of`'s parent, whose branch is the
        history; then the sibling's own context (a root's) and its user message, or the
        edited one. A regenerate names the request that first asked the message."""
        if user_id is None or prompt.conversation_id is None:
            raise ValueError("a branch needs the caller and the conversation resolved first")
        conv = await self._store.conversation(prompt.conversation_id, user_id)
        if conv is None:
            raise NotFound("No such conversation.", param="conversation_id")
        owned = await self._store.request(branching.sibling_of, user_id)
        if owned is None or owned.conversation_id != conv.id:
            raise NotFound("No such request in this conversation.", param="request_id")
        last = await self._wait_last(conv.last_request_id)
        turn = await self._read.turn(conv.id, branching.sibling_of)
        if turn is None:
            raise ConversationBusy(
                "That message is not in the conversation's history yet; retry shortly.",
                param="request_id",
                headers={"Retry-After": "1"},
            )
        parent = turn.parent_request_id
        history = [] if parent is None else await self._read.history(conv.id, parent)
        user = turn.user if branching.content is None else ChatMessage("user", branching.content)
        messages = compose(history, (*turn.context, user))
        if branching.branch == "regenerate":
            branching = Branching("regenerate", turn.origin_request_id)
        return conv.id, last, parent, messages, branching

    def _refuse_unless_admitted(self, admission: Admission) -> None:
        if admission.verdict == "ok":
            return
        if admission.verdict == "unauthorized":
            raise Unauthorized("Invalid API key.")
        headers = ratelimit.headers(admission.window)
        if admission.verdict == "rate_limited":
            headers["Retry-After"] = ratelimit.retry_after(admission.window.reset_s)
            raise RateLimited(
                f"Rate limit reached: {admission.window.limit} prompts per "
                f"{admission.window.window_s:g} s. Retry after {headers['Retry-After']} s.",
                headers=headers,
            )
        if admission.verdict == "too_many_generations":
            headers["Retry-After"] = "1"
            raise RateLimited(
                f"Too many concurrent generations ({admission.running}; limit "
                f"{self._s.max_concurrent_generations}). Wait for one to finish.",
                code="too_many_concurrent_generations",
                headers=headers,
            )
        raise ConversationBusy(
            "Another prompt was just accepted in this conversation; retry with the new context.",
            param="conversation_id",
            headers=headers,
        )
