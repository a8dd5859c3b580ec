"""What chat.completions already says about the prompts a replica is about to get.

After a rebalance or a crash, the prompts from a partition's committed offset onwards are
delivered again. For each, the replica needs: has this request already a final event
(then it is not generated again) and which attempts were started (the new one is one
higher). Completion events are written to the same partition number as their prompt
(see `publisher.py`), so the answer for conversations partition p is in completions
partition p, after the time the prompt at the committed offset was produced (less a
clock-skew allowance). Nothing to redeliver, nothing to read.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import EVENT_TYPE_HEADER, decode
from schemas.errors import EventDecodeError
from schemas.events import CompletionFailed, CompletionFinished, CompletionStarted

log = logging.getLogger(__name__)

SCAN_TIMEOUT_S = 120.0  # a scan that cannot finish must not hang the rebalance forever
_INTERESTING = {b"CompletionStarted", b"CompletionFinished", b"CompletionFailed"}


@dataclass
class Attempts:
    last_attempt: int = 0
    final: bool = False


class AttemptLedger:
    """request_id -> Attempts, bounded (oldest forgotten first)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._entries: OrderedDict[str, Attempts] = OrderedDict()
        self._capacity = capacity

    def get(self, request_id: str) -> Attempts | None:
        return self._entries.get(request_id)

    def note(self, request_id: str, attempt: int, *, final: bool) -> None:
        entry = self._entries.setdefault(request_id, Attempts())
        entry.last_attempt = max(entry.last_attempt, attempt)
        entry.final = entry.final or final
        self._entries.move_to_end(request_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


async def scan_partitions(
    reader: AIOKafkaConsumer,
    ledger: AttemptLedger,
    *,
    conversations: str,
    completions: str,
    committed: dict[int, int | None],
    lookback_ms: int,
) -> int:
    """Fill `ledger` for the given conversations partitions; returns records read."""
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
    stamps = await _timestamps_at(reader, starts)
    comp = {
        TopicPartition(completions, tp.partition): ts - lookback_ms for tp, ts in stamps.items()
    }
    found = await reader.offsets_for_times(comp)
    comp_ends = await reader.end_offsets(list(comp))
    todo = {tp: (o.offset, comp_ends[tp]) for tp, o in found.items() if o is not None}
    return await _read_ranges(reader, ledger, todo)


async def _timestamps_at(
    reader: AIOKafkaConsumer, starts: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    reader.assign(list(starts))
    for tp, off in starts.items():
        reader.seek(tp, off)
    stamps: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + SCAN_TIMEOUT_S
    while len(stamps) < len(starts) and time.monotonic() < deadline:
        batch = await reader.getmany(
            *[tp for tp in starts if tp not in stamps], timeout_ms=1000, max_records=1
        )
        for tp, records in batch.items():
            if records and tp not in stamps:
                stamps[tp] = records[0].timestamp
    return stamps


async def _read_ranges(
    reader: AIOKafkaConsumer, ledger: AttemptLedger, ranges: dict[TopicPartition, tuple[int, int]]
) -> int:
    todo = {tp: r for tp, r in ranges.items() if r[0] < r[1]}
    if not todo:
        return 0
    reader.assign(list(todo))
    for tp, (start, _) in todo.items():
        reader.seek(tp, start)
    read = 0
    deadline = time.monotonic() + SCAN_TIMEOUT_S
    while todo and time.monotonic() < deadline:
        batch = await reader.getmany(*todo, timeout_ms=1000, max_records=5000)
        for tp, records in batch.items():
            for rec in records:
                read += 1
                _note(ledger, rec.value, rec.headers, rec.partition, rec.offset)
                if rec.offset + 1 >= todo.get(tp, (0, 0))[1]:
                    todo.pop(tp, None)
                    break
    reader.unsubscribe()
    return read


def _note(
    ledger: AttemptLedger, value: bytes | None, headers: object, partition: int, offset: int
) -> None:
    hdrs = dict(headers)  # type: ignore[call-overload]
    if hdrs.get(EVENT_TYPE_HEADER) not in _INTERESTING:
        return  # TokenChunks are most of the topic: skip them without decoding
    try:
        event = decode(value, hdrs, partition=partition, offset=offset)
    except EventDecodeError:
        log.warning("undecodable completion event at %s/%s ignored", partition, offset)
        return
    if isinstance(event, CompletionStarted):
        ledger.note(event.request_id, event.attempt, final=False)
    elif isinstance(event, CompletionFinished | CompletionFailed):
        ledger.note(event.request_id, event.attempt, final=True)
