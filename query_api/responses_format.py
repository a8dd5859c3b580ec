"""Our completion stream -> OpenAI Responses objects and `response.*` stream events.

A response IS a chat completion request (same id, same events: no second pipeline); this
module only changes the wire shape. The translation is a pure function of the request's
event sequence, so a stream replayed from its start numbers every event exactly as the
live one did: `starting_after=N` replays and drops events up to N (`sequence_number`s
are ours to define; they never appear in the log).

OpenAI's stream cannot retract text: a new attempt (`reset`) after some text was sent
ends the stream with `response.failed` (code `stream_reset`), as the chat stream does.
A cancelled generation ends with `response.incomplete` whose response has status
`cancelled` (OpenAI has no `response.cancelled` event).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.attempts import attempt_verdict

# chat.completion.status -> Response.status
STATUS = {
    "queued": "queued",
    "finished": "completed",
    "cancelled": "cancelled",
    "failed": "failed",
}


def created_at(view: dict[str, Any]) -> int:
    """The request's creation time (epoch seconds; 0 before the projection has it)."""
    raw = (view.get("timings") or {}).get("created_at")
    return int(datetime.fromisoformat(raw).timestamp()) if raw else 0


def usage(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """Our usage (prompt/completion tokens) in the Responses shape."""
    if not raw:
        return None
    inp, out = int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0)
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": inp + out,
    }


def message_item(response_id: str, text: str | None, status: str) -> dict[str, Any]:
    """The one output message (no text yet: no content part)."""
    content = [] if text is None else [text_part(text)]
    return {
        "id": f"msg_{response_id}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def base_object(
    response_id: str, model: str, created: int, status: str, conversation_id: str
) -> dict[str, Any]:
    """A Response with no output yet; the fields the SDK's model declares are all here."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": None,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": False,
        "previous_response_id": None,
        "store": True,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "none",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": None,
        "metadata": {},
        # not OpenAI's: where the same turn lives in the chatlog API
        "conversation_id": conversation_id,
    }


def finish(obj: dict[str, Any], finish_reason: str | None) -> None:
    """Set a finished response's status (and why it is incomplete) from its finish reason."""
    if finish_reason == "cancelled":
        obj["status"] = "cancelled"
    elif finish_reason == "length":
        obj["status"] = "incomplete"
        obj["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        obj["status"] = "completed"


def response_object(view: dict[str, Any]) -> dict[str, Any]:
    """A Response from a `chat.completion.status` view (routes.completions.completion_view)."""
    status = STATUS.get(view["status"], "in_progress")
    obj = base_object(view["id"], view["model"], created_at(view), status, view["conversation_id"])
    text = view.get("text") or ""
    if status == "completed":
        finish(obj, view.get("finish_reason"))
    if status == "failed":
        err = view.get("error") or {}
        obj["error"] = {
            "code": "server_error",
            "message": str(err.get("message") or "The generation failed."),
        }
    if text or status in ("completed", "cancelled"):
        done = obj["status"] != "in_progress"
        obj["output"] = [message_item(view["id"], text, "completed" if done else "in_progress")]
    obj["usage"] = usage(view.get("usage"))
    return obj


@dataclass
class ResponseStream:
    """Maps one request's SSE events (chunk/reset/done/error) to Responses stream events."""

    response_id: str
    model: str
    created: int
    conversation_id: str
    seq: int = -1
    parts: list[str] = field(default_factory=list)
    opened: bool = False
    attempt: int | None = None

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"type": type_, "sequence_number": self.seq, **fields}

    def _object(self, status: str) -> dict[str, Any]:
        return base_object(self.response_id, self.model, self.created, status, self.conversation_id)

    @property
    def item_id(self) -> str:
        return f"msg_{self.response_id}"

    def start(self) -> list[dict[str, Any]]:
        return [
            self._event("response.created", response=self._object("in_progress")),
            self._event("response.in_progress", response=self._object("in_progress")),
        ]

    def _open(self) -> list[dict[str, Any]]:
        if self.opened:
            return []
        self.opened = True
        where = {"output_index": 0, "item_id": self.item_id}
        return [
            self._event(
                "response.output_item.added",
                output_index=0,
                item=message_item(self.response_id, None, "in_progress"),
            ),
            self._event(
                "response.content_part.added", **where, content_index=0, part=text_part("")
            ),
        ]

    def on(self, event: str, data: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The events one upstream event makes, and whether the stream is over."""
        attempt = data.get("attempt")
        if event == "chunk":
            verdict = attempt_verdict(self.attempt, attempt)
            if verdict == "stale":
                return [], False  # a lower attempt's straggler
            if verdict == "restart":
                return self._reset(attempt)
            self.attempt = attempt
            text = str(data.get("text", ""))
            if not text:
                return [], False
            out = self._open()
            self.parts.append(text)
            out.append(
                self._event(
                    "response.output_text.delta",
                    item_id=self.item_id,
                    output_index=0,
                    content_index=0,
                    delta=text,
                    logprobs=[],
                )
            )
            return out, False
        if event == "reset":
            return self._reset(attempt)
        if event == "done":
            return self._done(data), True
        if event == "error":
            err = data.get("error") or {}
            return [self._failed(str(err.get("message") or "The generation failed."))], True
        return [], False

    def _done(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.model = str(data.get("model") or self.model)
        text = "".join(self.parts)
        where = {"output_index": 0, "item_id": self.item_id, "content_index": 0}
        out = self._open()
        out.append(self._event("response.output_text.done", **where, text=text, logprobs=[]))
        out.append(self._event("response.content_part.done", **where, part=text_part(text)))
        item = message_item(self.response_id, text, "completed")
        out.append(self._event("response.output_item.done", output_index=0, item=item))
        obj = self._object("completed")
        finish(obj, data.get("finish_reason"))
        obj["output"] = [item]
        obj["usage"] = usage(data.get("usage"))
        kind = "response.completed" if obj["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response=obj))
        return out

    def _failed(self, message: str, code: str = "server_error") -> dict[str, Any]:
        obj = self._object("failed")
        obj["error"] = {"code": code, "message": message}
        return self._event("response.failed", response=obj)

    def _reset(self, attempt: int | None) -> tuple[list[dict[str, Any]], bool]:
        self.attempt = attempt
        if not self.parts:
            return [], False
        message = (
            f"The generation was restarted (attempt {attempt}) after part of its text was "
            f"sent; that text cannot be retracted. Retrieve response {self.response_id} again."
        )
        return [self._failed(message, "stream_reset")], True


def sse(event: dict[str, Any]) -> bytes:
    """One Responses SSE frame (`event:` is the type, as OpenAI sends it)."""
    body = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {body}\n\n".encode()


class FrameParser:
    """Our own SSE bytes (query_api.sse) back into (event, data) pairs; pings skipped."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[str, dict[str, Any]]]:
        self._buf += data
        *frames, self._buf = self._buf.split(b"\n\n")
        out: list[tuple[str, dict[str, Any]]] = []
        for raw in frames:
            event, payload = "message", ""
            for line in raw.decode().split("\n"):
                name, _, value = line.partition(": ")
                if name == "event":
                    event = value
                elif name == "data":
                    payload = value
            if payload:
                out.append((event, json.loads(payload)))
        return out
