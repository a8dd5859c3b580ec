"""Each query process's hub reads its share of chat.completions (query_api.hub_share)."""

from __future__ import annotations

import asyncio

import pytest

from query_api.hub import Hub
from query_api.hub_share import Share
from query_api.settings import QuerySettings
from tests.unit.query_api.test_hub import prompt


def test_the_shares_of_n_instances_cover_every_partition_once() -> None:
    shares = [Share(i, 3) for i in range(3)]
    for partition in range(12):
        assert sum(s.owns(partition) for s in shares) == 1
        assert shares[Share(0, 3).owner_of(partition)].owns(partition)
    assert all(Share().owns(p) for p in range(12))  # one instance reads everything


@pytest.mark.parametrize("instance, instances", [(2, 2), (-1, 2), (0, 0)])
def test_an_instance_outside_its_count_is_refused_at_start(instance: int, instances: int) -> None:
    with pytest.raises(ValueError, match="CHATLOG_QUERY_INSTANCE"):
        Share(instance, instances)


def test_a_request_in_a_partition_the_hub_does_not_read_is_polled_for_not_awaited() -> None:
    hub = Hub(QuerySettings(query_instance=1, query_instances=2))
    hub._learn_owner(prompt("mine"), partition=3)
    hub._learn_owner(prompt("theirs"), partition=4)
    # its own share: the hub will see the end, so a waiting stream need not poll Postgres
    assert hub.reads(3) and hub.saw_submitted("mine")
    # another's: whatever the hub knows of the request, it will not see its end
    assert not hub.reads(4) and not hub.saw_submitted("theirs")
    theirs = hub.owner("theirs")
    assert theirs is not None and theirs.partition == 4
    # adopted later (the owner is down): read from then on, its end may have come before
    hub.adopted.add(4)
    assert hub.reads(4) and not hub.saw_submitted("theirs")


class SlowReader:
    """Stands in for the hub's Kafka reader: `add` takes a while, or fails."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.fail = fail

    async def add(self, topic: str, partition: int) -> None:
        self.calls.append(partition)
        await asyncio.sleep(0.05)
        if self.fail:
            raise RuntimeError("broker refused")


async def test_streams_adopting_one_partition_at_once_add_it_once() -> None:
    hub = Hub(QuerySettings(query_instance=0, query_instances=2))
    hub._reader = reader = SlowReader()  # type: ignore[assignment]
    first = asyncio.ensure_future(hub.adopt(5))
    await asyncio.sleep(0.01)
    first.cancel()  # the first client went away: the adoption goes on for the others
    await asyncio.gather(hub.adopt(5), hub.adopt(5))
    assert reader.calls == [5] and hub.reads(5)
    await hub.adopt(5)
    assert reader.calls == [5]


async def test_an_adoption_kafka_refuses_leaves_the_stream_to_poll_postgres() -> None:
    hub = Hub(QuerySettings(query_instance=0, query_instances=2))
    hub._reader = SlowReader(fail=True)  # type: ignore[assignment]
    await hub.adopt(5)  # no error for the stream
    assert not hub.reads(5)
