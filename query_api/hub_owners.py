"""Who owns a request, learnt by the hub from chat.conversations before any projection.

A client opens its stream milliseconds after the POST, often before the projection has
written `chatlog.completions`: the hub reads each PromptSubmitted itself and wakes whoever
waits for that request's owner. It also reads ConversationDeleted: a deleted
conversation's requests are forgotten at once (404 from then on, whatever Postgres still
holds), and remembered as deleted so that later events of them are not buffered again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

from schemas.events import ConversationDeleted, PromptSubmitted


@dataclass(frozen=True, slots=True)
class Owner:
    user_id: str
    conversation_id: str
    model: str
    created_at: float = 0.0  # the PromptSubmitted's occurred_at (epoch seconds)
    # its chat.conversations partition, hence its chat.completions one (hub_share)
    partition: int = -1


class Owners:
    """request -> owner (bounded, oldest first out), and the conversations deleted."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._owners: OrderedDict[str, Owner] = OrderedDict()
        self._by_conversation: dict[str, list[str]] = {}
        self.deleted_conversations: OrderedDict[str, None] = OrderedDict()  # oldest first
        # requests whose buffer the hub dropped (TTL, bounds): it will not see their end
        self._forgotten: set[str] = set()
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}

    def learn(self, event: PromptSubmitted, partition: int = -1) -> None:
        rid, cid = event.request_id, event.conversation_id
        if cid in self.deleted_conversations:
            return
        if rid not in self._owners:
            self._by_conversation.setdefault(cid, []).append(rid)
        self._owners[rid] = Owner(
            event.user_id, cid, event.model, event.occurred_at.timestamp(), partition
        )
        self._owners.move_to_end(rid)
        while len(self._owners) > self.max_entries:
            old, owner = self._owners.popitem(last=False)
            self._unindex(old, owner.conversation_id)
        for waiter in self.waiters.pop(rid, ()):
            if not waiter.done():
                waiter.set_result(None)

    def delete(self, event: ConversationDeleted) -> list[str]:
        """Forget the conversation's requests; their ids (for the hub to drop)."""
        cid = event.conversation_id
        self.deleted_conversations[cid] = None
        self.deleted_conversations.move_to_end(cid)
        while len(self.deleted_conversations) > self.max_entries:
            self.deleted_conversations.popitem(last=False)
        rids = self._by_conversation.pop(cid, [])
        for rid in rids:
            self._owners.pop(rid, None)
            self._forgotten.discard(rid)
        return rids

    def _unindex(self, rid: str, cid: str) -> None:
        self._forgotten.discard(rid)
        rids = self._by_conversation.get(cid)
        if rids is not None:
            if rid in rids:
                rids.remove(rid)
            if not rids:
                del self._by_conversation[cid]

    def get(self, request_id: str) -> Owner | None:
        return self._owners.get(request_id)

    def deleted(self, conversation_id: str) -> bool:
        return conversation_id in self.deleted_conversations

    def forget_buffer(self, request_id: str) -> None:
        """The hub dropped this request's buffer: whatever it saw is now Postgres' to say."""
        if request_id in self._owners:
            self._forgotten.add(request_id)

    def saw_submitted(self, request_id: str) -> bool:
        """The hub read this request's PromptSubmitted and still holds all it saw since."""
        return request_id in self._owners and request_id not in self._forgotten

    def __len__(self) -> int:
        return len(self._owners)

    async def wait(self, request_id: str, timeout_s: float) -> Owner | None:
        """The request's owner as soon as the hub reads its PromptSubmitted (None after
        `timeout_s`): waking on arrival instead of polling saves a poll period."""
        owner = self._owners.get(request_id)
        if owner is not None or timeout_s <= 0:
            return owner
        waiter = asyncio.get_running_loop().create_future()
        waiters = self.waiters.setdefault(request_id, [])
        waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            pass
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters and self.waiters.get(request_id) is waiters:
                del self.waiters[request_id]
        return self._owners.get(request_id)
