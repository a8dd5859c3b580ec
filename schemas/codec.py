"""Avro codec: typed events <-> (headers, bytes) on the wire (ARCHITECTURE §3).

A record carries headers `event-type` and `schema-version` and a schemaless Avro body.
A reader decodes with the writer's schema (named by the headers) resolved to the newest
schema of that type, so adding a field with a default is a compatible change.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

import fastavro

from schemas.errors import CorruptEvent, UnknownEventType
from schemas.events import (
    EVENT_CLASSES,
    ChatMessage,
    Event,
    GenerationParams,
    Usage,
)

EVENT_TYPE_HEADER = "event-type"
SCHEMA_VERSION_HEADER = "schema-version"

Headers = list[tuple[str, str | bytes | None]]


@cache
def schema_registry() -> dict[tuple[str, int], Any]:
    """Every known (event type, version) -> parsed schema, read from `schemas/avro/`."""
    registry: dict[tuple[str, int], Any] = {}
    for entry in resources.files("schemas").joinpath("avro").iterdir():
        if not entry.name.endswith(".avsc"):
            continue
        event_type, version, _ = entry.name.rsplit(".", 2)
        registry[(event_type, int(version.removeprefix("v")))] = fastavro.parse_schema(
            json.loads(entry.read_text())
        )
    return registry


@cache
def current_version(event_type: str) -> int:
    """The newest schema version of an event type: the one writers use."""
    return max(v for (t, v) in schema_registry() if t == event_type)


def encode(event: Event) -> tuple[bytes, Headers]:
    """Serialise an event: (Avro body, headers). Raises ValueError on an invalid event."""
    version = current_version(event.event_type)
    schema = schema_registry()[(event.event_type, version)]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, _to_avro(event), strict_allow_default=True)
    headers: Headers = [
        (EVENT_TYPE_HEADER, event.event_type.encode()),
        (SCHEMA_VERSION_HEADER, str(version).encode()),
    ]
    return buf.getvalue(), headers


def decode(
    value: bytes | None,
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> Event:
    """Deserialise a record into its typed event, resolving the writer schema to ours.

    Raises UnknownEventType or CorruptEvent (both name topic, partition and offset).
    """
    event_type, record = _read(value, headers, topic, partition, offset)
    try:
        return _from_avro(EVENT_CLASSES[event_type], record)
    except (TypeError, ValueError) as exc:
        raise CorruptEvent(
            f"{event_type} body does not fit its class: {exc}",
            topic=topic,
            partition=partition,
            offset=offset,
        ) from exc


def event_type_of(
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
) -> str | None:
    """The `event-type` header, read without touching the body (None: absent/unreadable).

    Lets a consumer that handles a few event types skip the others at header cost.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for key, raw in pairs:
        if key == EVENT_TYPE_HEADER and raw is not None:
            try:
                return raw if isinstance(raw, str) else raw.decode()
            except UnicodeDecodeError:
                return None
    return None


def decode_if(
    value: bytes | None,
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
    types: frozenset[str],
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> Event | None:
    """`decode` for the event types in `types`; any other type is None, its body unread.

    The hot consumer's path (the query API's hub). A wanted record decodes to the same
    event, with the same errors, as `decode`, but cheaper: the header -> schema lookup is
    cached, and a flat event (no nested records) skips the dataclass `__init__`, whose
    frozen `object.__setattr__` per field is a third of a small event's decode time.
    Anything unusual (unknown headers, a record that is not exactly the class's fields)
    goes through `decode`, so it decodes or fails exactly as there.
    """
    raw_type = raw_version = None
    for key, raw in headers.items() if isinstance(headers, Mapping) else (headers or ()):
        if key == EVENT_TYPE_HEADER:
            raw_type = raw
        elif key == SCHEMA_VERSION_HEADER:
            raw_version = raw
    try:
        plan = _plan(raw_type, raw_version) if value is not None else None
    except TypeError:  # an unhashable header value (bytearray): the checked path
        plan = None
    if plan is None:
        event_type = event_type_of(headers)
        if event_type is not None and event_type not in types:
            return None
        return decode(value, headers, topic=topic, partition=partition, offset=offset)
    event_type, writer, reader, cls, names = plan
    if event_type not in types:
        return None
    assert value is not None
    buf = io.BytesIO(value)
    try:
        record = fastavro.schemaless_reader(buf, writer, reader)
    except Exception:  # garbage: let decode raise its typed error
        record = None
    if names is None or not isinstance(record, dict) or buf.tell() != len(value):
        return decode(value, headers, topic=topic, partition=partition, offset=offset)
    if record.keys() != names:
        return decode(value, headers, topic=topic, partition=partition, offset=offset)
    event = cls.__new__(cls)
    event.__dict__.update(record)  # frozen blocks setattr, not the instance dict
    return event


# (event type, writer schema, reader schema or None, class, field names if flat else None)
_Plan = tuple[str, Any, Any, type[Event], frozenset[str] | None]
_PLANS: dict[tuple[str | bytes | None, str | bytes | None], _Plan | None] = {}
_NESTED = frozenset({"messages", "params", "usage"})  # fields _from_avro converts


def _plan(raw_type: str | bytes | None, raw_version: str | bytes | None) -> _Plan | None:
    """How to read a record with these header values (None: not a known type/version)."""
    key = (raw_type, raw_version)
    if key in _PLANS:
        return _PLANS[key]
    plan: _Plan | None = None
    try:
        event_type = raw_type.decode() if isinstance(raw_type, bytes) else raw_type
        version = int(raw_version) if raw_version is not None else -1
    except (UnicodeDecodeError, ValueError):
        event_type, version = None, -1
    registry = schema_registry()
    if event_type is not None and (event_type, version) in registry:
        cls = EVENT_CLASSES.get(event_type)
        if cls is not None:
            writer = registry[(event_type, version)]
            reader = registry[(event_type, current_version(event_type))]
            names = _init_fields(cls)
            flat = None if names & _NESTED else names
            plan = (event_type, writer, None if writer is reader else reader, cls, flat)
    if len(_PLANS) < 1024:  # header values come from the log: bound the cache
        _PLANS[key] = plan
    return plan


def _read(
    value: bytes | None,
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
    topic: str | None,
    partition: int | None,
    offset: int | None,
) -> tuple[str, dict[str, Any]]:
    """(event type, Avro record resolved to the current schema), or a typed error."""

    def corrupt(reason: str) -> CorruptEvent:
        return CorruptEvent(reason, topic=topic, partition=partition, offset=offset)

    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    header_map = {k: v.encode() if isinstance(v, str) else v for k, v in pairs if v is not None}
    raw_type, raw_version = header_map.get(EVENT_TYPE_HEADER), header_map.get(SCHEMA_VERSION_HEADER)
    if raw_type is None or raw_version is None or value is None:
        raise corrupt("missing event-type/schema-version header or empty value")
    try:
        event_type, version = raw_type.decode(), int(raw_version.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise corrupt(f"unreadable headers: {exc}") from exc
    registry = schema_registry()
    if (event_type, version) not in registry or event_type not in EVENT_CLASSES:
        raise UnknownEventType(
            f"unknown event {event_type!r} v{version}",
            topic=topic,
            partition=partition,
            offset=offset,
        )
    reader = registry[(event_type, current_version(event_type))]
    buf = io.BytesIO(value)
    try:
        writer = registry[(event_type, version)]
        # Resolution costs a schema comparison per record: skip it when nothing to resolve.
        record = fastavro.schemaless_reader(buf, writer, None if writer is reader else reader)
    except Exception as exc:  # fastavro raises many types on garbage input
        raise corrupt(f"undecodable {event_type} v{version} body: {exc!r}") from exc
    if buf.tell() != len(value):
        raise corrupt(f"trailing bytes after {event_type} v{version} body")
    if not isinstance(record, dict):
        raise corrupt(f"{event_type} body does not fit its class: record is not a mapping")
    return event_type, record


def _to_avro(event: Event) -> dict[str, Any]:
    # A shallow copy: dataclasses.asdict deep-copies every value, a hot cost per event.
    record = {name: getattr(event, name) for name in _init_fields(type(event))}
    if "messages" in record:
        record["messages"] = [{"role": m.role, "content": m.content} for m in record["messages"]]
    if "params" in record:
        p = record["params"]
        record["params"] = {
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stop": list(p.stop),
            "seed": p.seed,
        }
    if "usage" in record:
        u = record["usage"]
        record["usage"] = {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
        }
    return record


_INIT_FIELDS: dict[str, frozenset[str]] = {}


def _init_fields(cls: type[Event]) -> frozenset[str]:
    names = _INIT_FIELDS.get(cls.event_type)
    if names is None:
        names = _INIT_FIELDS[cls.event_type] = frozenset(
            f.name for f in dataclasses.fields(cls) if f.init
        )
    return names


def _from_avro(cls: type[Event], record: dict[str, Any]) -> Event:
    names = _init_fields(cls)
    kwargs = {k: v for k, v in record.items() if k in names}
    if "messages" in kwargs:
        kwargs["messages"] = tuple(ChatMessage(**m) for m in kwargs["messages"])
    if "params" in kwargs:
        kwargs["params"] = GenerationParams(
            **{**kwargs["params"], "stop": tuple(kwargs["params"]["stop"])}
        )
    if "usage" in kwargs:
        kwargs["usage"] = Usage(**kwargs["usage"])
    return cls(**kwargs)
