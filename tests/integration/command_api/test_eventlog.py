"""The append guarantee on the real broker: a failed append never shows up in the log.

Send timeouts around Kafka's own ack latency make some appends time out while their
record is queued or in flight; whatever `append` reports must be the truth in the topic.
"""

from __future__ import annotations

import asyncio

import pytest

from command_api.errors import EventLogUnavailable
from command_api.eventlog import KafkaEventLog
from schemas import ConversationRenamed
from tests.integration.command_api.conftest import command_settings, read_events

pytestmark = pytest.mark.integration


async def test_append_outcome_is_the_truth_even_when_it_times_out_in_flight(infra_settings):
    acked, refused = set(), set()
    settings = command_settings(infra_settings, kafka_send_timeout_s=2.0)
    for i in range(24):
        timeout = 0.0005 * (1 + i % 8)  # 0.5 .. 4 ms: around the broker's ack latency
        log = KafkaEventLog(settings)
        await log.start(10, required=True)
        log._timeout_s = timeout  # connect generously, then append under the tight bound
        event = ConversationRenamed(conversation_id=f"c-{i}", user_id="u", title=f"t{i}")
        try:
            await log.append(event)
            acked.add(event.event_id)
        except EventLogUnavailable:
            refused.add(event.event_id)
        await log.close()
    await asyncio.sleep(2.0)  # anything still in flight would land by now
    present = {
        e.event_id
        for _, e in await asyncio.to_thread(read_events, settings)
        if isinstance(e, ConversationRenamed) and e.user_id == "u"
    }
    assert present == acked
    assert refused, "no append timed out: the timeouts no longer probe the in-flight case"
