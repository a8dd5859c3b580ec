from infra.dlq import dlq_headers


def test_dlq_headers_keep_originals_and_name_the_source() -> None:
    headers = dict(
        dlq_headers(
            [("event-type", b"TokenChunk"), ("x", None)],
            error=ValueError("bad"),
            consumer="postgres-projection",
            topic="chat.completions",
            partition=4,
            offset=99,
        )
    )
    assert headers["event-type"] == b"TokenChunk"
    assert "x" not in headers
    assert headers["dlq-error"] == b"bad" and headers["dlq-error-type"] == b"ValueError"
    assert (
        headers["dlq-source-topic"],
        headers["dlq-source-partition"],
        headers["dlq-source-offset"],
    ) == (b"chat.completions", b"4", b"99")
    assert headers["dlq-consumer"] == b"postgres-projection"
