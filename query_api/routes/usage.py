"""`GET /v1/usage`: the caller's own token usage, in day buckets, shaped like OpenAI's
organization usage API (`object: page` of `bucket`s, each with `results`).

It reads the usage meter's read model (`chatlog.usage_requests`, processors/usage), a
projection: a request is counted once its final has been folded, typically within a second.
A request belongs to the UTC day of its prompt.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from infra.http import BadRequest
from query_api.deps import CurrentUser, State

router = APIRouter(prefix="/v1/usage", tags=["usage"])

DAY_S = 86_400
MAX_BUCKETS = 366  # a year of days per call
MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a date holds

_TOTALS = """
    count(*)::bigint, coalesce(sum(prompt_tokens), 0)::bigint,
    coalesce(sum(completion_tokens), 0)::bigint,
    count(*) FILTER (WHERE outcome = 'cancelled')::bigint,
    count(*) FILTER (WHERE outcome = 'failed')::bigint"""


def _day_start(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


def _result(row: tuple[Any, ...], model: str | None) -> dict[str, Any]:
    requests, prompt, completion, cancelled, failed = row
    return {
        "object": "usage.completions.result",
        "model": model,
        "input_tokens": prompt,
        "output_tokens": completion,
        "num_model_requests": requests,
        "num_cancelled_requests": cancelled,
        "num_failed_requests": failed,
    }


@router.get("")
async def get_usage(
    state: State,
    user: CurrentUser,
    start: Annotated[int, Query(ge=0, le=MAX_TIME, description="Unix s; its UTC day is first")],
    end: Annotated[int | None, Query(ge=0, le=MAX_TIME, description="Unix s, exclusive")] = None,
    bucket: Literal["day"] = "day",
    group_by: Literal["model"] | None = None,
) -> dict[str, Any]:
    """One bucket per UTC day from `start`'s day to the day before `end` (or today)."""
    end_s = int(time.time()) if end is None else end
    first = datetime.fromtimestamp(start, UTC).date()
    last = datetime.fromtimestamp(max(end_s - 1, start), UTC).date()
    if end_s <= start:
        raise BadRequest("end must be after start.", param="end")
    if (last - first).days + 1 > MAX_BUCKETS:
        raise BadRequest(f"At most {MAX_BUCKETS} day buckets per request.", param="start")
    model = "model" if group_by == "model" else "NULL::text"
    async with state.pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT day, {model}, {_TOTALS} FROM chatlog.usage_requests"
            f" WHERE user_id = %s AND day BETWEEN %s AND %s GROUP BY 1, 2 ORDER BY 1, 2",
            (user, first, last),
        )
        rows = await cur.fetchall()
    by_day: dict[date, list[dict[str, Any]]] = {}
    for day, name, *totals in rows:
        by_day.setdefault(day, []).append(_result(tuple(totals), name))
    buckets = []
    for i in range((last - first).days + 1):
        day = first + timedelta(days=i)
        buckets.append(
            {
                "object": "bucket",
                "start_time": _day_start(day),
                "end_time": _day_start(day) + DAY_S,
                "results": by_day.get(day, []),
            }
        )
    return {"object": "page", "bucket": bucket, "data": buckets, "has_more": False,
            "next_page": None}  # fmt: skip
