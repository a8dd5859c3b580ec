"""Our chunk stream -> OpenAI Responses events: numbered, deterministic, every ending."""

from __future__ import annotations

from typing import Any

from query_api.responses_format import FrameParser, ResponseStream, response_object, sse
from query_api.sse import chunk_frame

Ev = tuple[str, dict[str, Any]]


def chunk(seq: int, text: str, attempt: int = 0) -> Ev:
    return ("chunk", {"attempt": attempt, "seq": seq, "text": text})


def done(reason: str = "stop") -> Ev:
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    return ("done", {"attempt": 0, "finish_reason": reason, "usage": usage, "model": "m"})


def run(events: list[Ev]) -> list[dict[str, Any]]:
    mapper = ResponseStream("r1", "m", 1700000000, "conv-1")
    out = mapper.start()
    for event, data in events:
        more, over = mapper.on(event, data)
        out += more
        if over:
            break
    return out


def test_a_finished_stream_is_openai_shaped_and_numbered_from_zero() -> None:
    out = run([chunk(0, "Hel"), chunk(1, ""), chunk(2, "lo"), done()])
    assert [e["type"] for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in out] == list(range(10))
    final = out[-1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["input_tokens"] == 3 and final["usage"]["total_tokens"] == 5


def test_the_same_events_always_number_the_same() -> None:
    events = [chunk(0, "a"), chunk(1, "b"), done()]
    assert run(events) == run(events)


def test_cancelled_and_truncated_answers_are_incomplete() -> None:
    cancelled = run([chunk(0, "a"), done("cancelled")])[-1]
    assert cancelled["type"] == "response.incomplete"
    assert cancelled["response"]["status"] == "cancelled"
    truncated = run([chunk(0, "a"), done("length")])[-1]
    assert truncated["type"] == "response.incomplete"
    assert truncated["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_an_answer_with_no_text_still_has_its_message() -> None:
    types = [e["type"] for e in run([done()])]
    assert "response.output_item.added" in types and types[-1] == "response.completed"


def test_a_failure_and_a_restart_after_text_are_failed_responses() -> None:
    failed = run([chunk(0, "a"), ("error", {"error": {"message": "boom"}})])[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "boom"}
    restarted = run([chunk(0, "a"), chunk(0, "b", attempt=1)])[-1]
    assert restarted["response"]["error"]["code"] == "stream_reset"


def test_a_restart_before_any_text_and_a_stale_straggler_change_nothing() -> None:
    out = run([("reset", {"attempt": 1}), chunk(0, "x", attempt=1), chunk(5, "old"), done()])
    assert [e["delta"] for e in out if e["type"] == "response.output_text.delta"] == ["x"]


def test_the_frame_parser_reads_our_frames_across_writes() -> None:
    raw = (
        chunk_frame("r1", 0, 0, 'say "hi": ok', 1) + b": ping\n\n" + chunk_frame("r1", 0, 1, "!", 1)
    )
    parser = FrameParser()
    got = parser.feed(raw[:17]) + parser.feed(raw[17:])
    assert [(e, d["text"]) for e, d in got] == [("chunk", 'say "hi": ok'), ("chunk", "!")]


def test_a_frame_names_its_type() -> None:
    assert sse({"type": "response.created", "sequence_number": 0}).startswith(
        b"event: response.created\ndata: {"
    )


def test_the_object_follows_the_completion_status() -> None:
    view = {
        "id": "r1",
        "model": "m",
        "conversation_id": "c",
        "status": "streaming",
        "text": "par",
        "finish_reason": None,
        "usage": None,
        "error": None,
        "timings": {"created_at": "2026-12-01T22:00:00+00:00"},
    }
    live = response_object(view)
    assert live["status"] == "in_progress" and live["output"][0]["status"] == "in_progress"
    assert live["created_at"] == 1796162400
    failed = response_object({**view, "status": "failed", "error": {"message": "no"}})
    assert failed["error"] == {"code": "server_error", "message": "no"}
    queued = response_object({**view, "status": "queued", "text": ""})
    assert (queued["status"], queued["output"]) == ("queued", [])
