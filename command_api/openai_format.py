"""Our stream events -> OpenAI's `chat.completion.chunk` stream or `chat.completion` object.

OpenAI's format cannot retract text: if a new attempt (`reset`) arrives after content was
relayed, the stream ends with an error chunk pointing at our resumable `stream_url`. The
non-streaming form simply starts its text over.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from command_api.upstream import SseEvent
from infra.http import ApiError, error_body
from schemas.attempts import attempt_verdict


class CompletionError(ApiError):
    """The generation failed (CompletionFailed) or its stream could not be served."""

    status, type, code = 500, "server_error", "completion_failed"


class CompletionUnavailable(CompletionError):
    """The generation ended with a retryable failure of availability (it waited past its
    queue deadline, or stalled): 503, so clients retry as they do for any outage."""

    status, type = 503, "service_unavailable"


# CompletionFailed codes a waiting (non-streaming) call answers with 503 + Retry-After.
UNAVAILABLE_CODES = frozenset({"queue_timeout", "stalled"})


def sse_data(payload: dict[str, Any] | str) -> str:
    body = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {body}\n\n"


def usage_of(data: dict[str, Any]) -> dict[str, int]:
    usage = data.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


@dataclass
class ChunkStream:
    """Stateful mapper for one request's OpenAI stream."""

    request_id: str
    model: str
    stream_url: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    attempt: int | None = None
    sent_content: bool = False

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            out["usage"] = None
        return out

    def first(self) -> str:
        return sse_data(self.chunk({"role": "assistant", "content": ""}))

    def on_event(self, ev: SseEvent) -> tuple[list[str], bool]:
        """The SSE frames to send for one upstream event, and whether the stream is over."""
        data = ev.data
        attempt = data.get("attempt")
        if ev.event == "chunk":
            verdict = attempt_verdict(self.attempt, attempt)
            if verdict == "stale":
                return [], False  # a lower attempt's straggler
            if verdict == "restart":
                return self._reset(attempt)
            self.attempt = attempt
            text = str(data.get("text", ""))
            if not text:
                return [], False
            self.sent_content = True
            return [sse_data(self.chunk({"content": text}))], False
        if ev.event == "reset":
            return self._reset(attempt)
        if ev.event == "done":
            self.model = str(data.get("model") or self.model)
            frames = [sse_data(self.chunk({}, str(data.get("finish_reason") or "stop")))]
            if self.include_usage:
                usage_chunk = self.chunk({})
                usage_chunk["choices"] = []
                usage_chunk["usage"] = usage_of(data)
                frames.append(sse_data(usage_chunk))
            return [*frames, sse_data("[DONE]")], True
        if ev.event == "error":
            return [sse_data({"error": data.get("error") or data})], True
        return [], False

    def _reset(self, attempt: int | None) -> tuple[list[str], bool]:
        self.attempt = attempt
        if not self.sent_content:
            return [], False
        message = (
            f"The generation was restarted (attempt {attempt}) after part of its text was "
            f"sent; that text cannot be retracted here. Re-read the completion from "
            f"{self.stream_url}."
        )
        return [sse_data(error_body(message, "server_error", "stream_reset"))], True

    def failure(self, exc: ApiError) -> str:
        message = f"{exc.message} The generation goes on: read it from {self.stream_url}."
        return sse_data(error_body(message, exc.type, exc.code, exc.param))


async def collect(
    events: AsyncIterator[SseEvent], *, request_id: str, model: str, conversation_id: str
) -> dict[str, Any]:
    """Drain a stream into one `chat.completion` object (a reset starts the text over)."""
    parts: list[str] = []
    attempt: int | None = None
    async for ev in events:
        data = ev.data
        if ev.event == "chunk":
            if attempt is not None and data.get("attempt", attempt) < attempt:
                continue
            if attempt is not None and data.get("attempt", attempt) > attempt:
                parts = []
            attempt = data.get("attempt", attempt)
            parts.append(str(data.get("text", "")))
        elif ev.event == "reset":
            parts, attempt = [], data.get("attempt", attempt)
        elif ev.event == "error":
            err = data.get("error") or {}
            message = str(err.get("message", "The generation failed."))
            if err.get("code") in UNAVAILABLE_CODES:
                raise CompletionUnavailable(
                    message, code=err.get("code"), headers={"Retry-After": "5"}
                )
            raise CompletionError(message, code=err.get("code"))
        elif ev.event == "done":
            return {
                "id": request_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": str(data.get("model") or model),
                "conversation_id": conversation_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "".join(parts),
                            "refusal": None,
                        },
                        "logprobs": None,
                        "finish_reason": str(data.get("finish_reason") or "stop"),
                    }
                ],
                "usage": usage_of(data),
            }
    raise CompletionError("The stream ended without a result.", code="stream_incomplete")
