"""A KRaft cluster id that kafka-storage can parse, every time."""

from infra.local.kafka import new_cluster_id


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    """One id in 64 used to start with "-", which kafka-storage took for an option: the
    broker's first start failed ("argument --cluster-id/-t: expected one argument")."""
    ids = {new_cluster_id() for _ in range(3000)}
    assert len(ids) == 3000
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)  # 16 random bytes, unpadded URL-safe base64
