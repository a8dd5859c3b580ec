"""What chat.completions already says about the prompts a replica is about to get.

After a rebalance or a crash, the prompts from a partition's committed offset onwards are
delivered again. For each, the replica needs: has this request already a final event
(then it is not generated again) and which attempts were started (the new one is one
higher). Completion events are written to the same partition number as their prompt
(see `publisher.py`), so the answer for conversations partition p is in completions
partition p, after the time the prompt at the committed offset was produced (less a
clock-skew allowance). Nothing to redeliver, nothing to read.

chat.answers is read over the same range: a final is written there only after the whole
attempt is on chat.completions, so a replica that died between the two writes leaves a
final on chat.completions alone. That request is finished (never generated again), but
its durable answer is missing: `Attempts.unanswered` holds the final, which the replica
that gets the prompt again writes to chat.answers (the same event: consumers fold it once).

A scan that cannot finish (timeout, broker away) raises LedgerUnavailable: reading less
than the whole range would make finished requests look unfinished and regenerate them as
attempt + 1, which wins and rewrites a stored answer. The caller retries, then stops
taking work; it never guesses.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from schemas.codec import EVENT_TYPE_HEADER, decode
from schemas.errors import EventDecodeError
from schemas.events import CompletionFailed, CompletionFinished, CompletionStarted

log = logging.getLogger(__name__)

SCAN_TIMEOUT_S = 120.0  # a scan that cannot finish must not hang the rebalance forever


class LedgerUnavailable(RuntimeError):
    """The completions could not be read to the end: what is finished is unknown."""


_INTERESTING = {b"CompletionStarted", b"CompletionFinished", b"CompletionFailed"}


@dataclass
class Attempts:
    last_attempt: int = 0
    final_attempt: int = 0  # the highest attempt with a final event (0: none)
    # A final found on chat.completions whose copy on chat.answers was not found: its
    # replica died between the two writes. The redelivered prompt writes it there.
    unanswered: CompletionFinished | CompletionFailed | None = None
    answered_attempt: int = 0  # the highest attempt with its final on chat.answers

    @property
    def final(self) -> bool:
        """The newest attempt ended. An attempt started after a final one (the earlier
        one's events were not all delivered) is still to be finished."""
        return self.final_attempt > 0 and self.final_attempt >= self.last_attempt


class AttemptLedger:
    """request_id -> Attempts, bounded (oldest forgotten first)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._entries: OrderedDict[str, Attempts] = OrderedDict()
        self._capacity = capacity

    def get(self, request_id: str) -> Attempts | None:
        return self._entries.get(request_id)

    def note(self, request_id: str, attempt: int, *, final: bool) -> Attempts:
        """An attempt started or (`final`) finished: by this replica, on both topics."""
        entry = self._entries.setdefault(request_id, Attempts())
        entry.last_attempt = max(entry.last_attempt, attempt)
        if final:
            entry.final_attempt = max(entry.final_attempt, attempt)
            self.answered(request_id, attempt)
        self._entries.move_to_end(request_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return entry

    def final_seen(self, event: CompletionFinished | CompletionFailed) -> None:
        """A final read on chat.completions: answered only once its copy on chat.answers
        is seen too (`answered`; the two scans interleave, so the order does not matter)."""
        entry = self._entries.setdefault(event.request_id, Attempts())
        entry.last_attempt = max(entry.last_attempt, event.attempt)
        entry.final_attempt = max(entry.final_attempt, event.attempt)
        newer = entry.unanswered is None or event.attempt >= entry.unanswered.attempt
        if event.attempt > entry.answered_attempt and newer:
            entry.unanswered = event
        self._entries.move_to_end(event.request_id)

    def answered(self, request_id: str, attempt: int) -> None:
        """The final of `attempt` is on chat.answers."""
        entry = self._entries.setdefault(request_id, Attempts())
        entry.final_attempt = max(entry.final_attempt, attempt)
        entry.last_attempt = max(entry.last_attempt, attempt)
        entry.answered_attempt = max(entry.answered_attempt, attempt)
        if entry.unanswered is not None and entry.unanswered.attempt <= attempt:
            entry.unanswered = None

    def __len__(self) -> int:
        return len(self._entries)


async def scan_partitions(
    reader: AIOKafkaConsumer,
    ledger: AttemptLedger,
    *,
    conversations: str,
    completions: str,
    answers: str,
    committed: dict[int, int | None],
    lookback_ms: int,
    timeout_s: float = SCAN_TIMEOUT_S,
) -> int:
    """Fill `ledger` for the given conversations partitions; returns records read.

    Raises LedgerUnavailable when it could not read everything within `timeout_s`."""
    starts: dict[TopicPartition, int] = {}
    conv = [TopicPartition(conversations, p) for p in committed]
    ends = await reader.end_offsets(conv)
    begins = await reader.beginning_offsets(conv)
    for tp in conv:
        pos = committed[tp.partition]
        pos = begins[tp] if pos is None else max(pos, begins[tp])
        if pos < ends[tp]:
            starts[tp] = pos
    if not starts:
        return 0
    # the produce time of the oldest prompt that will be redelivered, per partition
    deadline = time.monotonic() + timeout_s
    stamps = await _timestamps_at(reader, starts, deadline)
    comp = {
        TopicPartition(topic, tp.partition): ts - lookback_ms
        for tp, ts in stamps.items()
        for topic in (completions, answers)
    }
    found = await reader.offsets_for_times(comp)
    comp_ends = await reader.end_offsets(list(comp))
    todo = {tp: (o.offset, comp_ends[tp]) for tp, o in found.items() if o is not None}
    return await _read_ranges(reader, ledger, todo, deadline, answers)


async def _timestamps_at(
    reader: AIOKafkaConsumer, starts: dict[TopicPartition, int], deadline: float
) -> dict[TopicPartition, int]:
    reader.assign(list(starts))
    for tp, off in starts.items():
        reader.seek(tp, off)
    stamps: dict[TopicPartition, int] = {}
    while len(stamps) < len(starts) and time.monotonic() < deadline:
        batch = await reader.getmany(
            *[tp for tp in starts if tp not in stamps], timeout_ms=1000, max_records=1
        )
        for tp, records in batch.items():
            if records and tp not in stamps:
                stamps[tp] = records[0].timestamp
    reader.unsubscribe()
    if len(stamps) < len(starts):
        missing = sorted(tp.partition for tp in starts if tp not in stamps)
        raise LedgerUnavailable(f"no prompt timestamp for partitions {missing} in time")
    return stamps


async def _read_ranges(
    reader: AIOKafkaConsumer,
    ledger: AttemptLedger,
    ranges: dict[TopicPartition, tuple[int, int]],
    deadline: float,
    answers_topic: str,
) -> int:
    todo = {tp: r for tp, r in ranges.items() if r[0] < r[1]}
    if not todo:
        return 0
    reader.assign(list(todo))
    for tp, (start, _) in todo.items():
        reader.seek(tp, start)
    read = 0
    while todo and time.monotonic() < deadline:
        batch = await reader.getmany(*todo, timeout_ms=1000, max_records=5000)
        for tp, records in batch.items():
            for rec in records:
                read += 1
                _note(ledger, rec, answers=tp.topic == answers_topic)
                if rec.offset + 1 >= todo.get(tp, (0, 0))[1]:
                    todo.pop(tp, None)
                    break
    reader.unsubscribe()
    if todo:
        left = sorted(tp.partition for tp in todo)
        raise LedgerUnavailable(
            f"completions/answers partitions {left} not read to the end in time"
        )
    return read


def _note(ledger: AttemptLedger, rec: ConsumerRecord[bytes, bytes], *, answers: bool) -> None:
    hdrs = dict(rec.headers)
    if hdrs.get(EVENT_TYPE_HEADER) not in _INTERESTING:
        return  # TokenChunks are most of the topic: skip them without decoding
    try:
        event = decode(rec.value, hdrs, topic=rec.topic, partition=rec.partition, offset=rec.offset)
    except EventDecodeError:
        log.warning("undecodable event at %s/%s/%s ignored", rec.topic, rec.partition, rec.offset)
        return
    if isinstance(event, CompletionStarted):
        ledger.note(event.request_id, event.attempt, final=False)
    elif isinstance(event, CompletionFinished | CompletionFailed):
        if answers:
            ledger.answered(event.request_id, event.attempt)
        else:
            ledger.final_seen(event)
