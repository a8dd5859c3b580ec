"""Typed errors of the command API; each maps to an HTTP status via infra.http's ApiError."""

from __future__ import annotations

from infra.http import ApiError, Conflict, Unavailable, Unprocessable


class ConversationBusy(Conflict):
    """The conversation's last request is not terminal in the read model (yet)."""

    code = "conversation_busy"


class IdempotencyKeyReused(Unprocessable):
    """The same Idempotency-Key came back with a different body."""

    code = "idempotency_key_reused"


class IdempotencyInProgress(Conflict):
    """A request with this Idempotency-Key is being processed right now."""

    code = "idempotency_key_in_progress"


class EventLogUnavailable(Unavailable):
    """Kafka did not acknowledge the event within the send timeout; nothing was accepted."""

    code = "event_log_unavailable"


class GatewayTimeout(ApiError):
    """A `stream: false` prompt did not finish within the configured wait."""

    status, type, code = 504, "timeout_error", "completion_timeout"


class UpstreamUnavailable(Unavailable):
    """The query API (the source of the token stream) could not be reached."""

    code = "stream_unavailable"


class ModelUnavailable(Unavailable):
    """The model's breaker is open (no live replica, or too many failures): nothing was
    accepted; retry after the `Retry-After` header's seconds."""

    code = "model_unavailable"
