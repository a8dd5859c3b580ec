"""A request's reads served by the query process whose hub reads its partition.

With several query processes each hub reads a share of chat.completions
(`query_api.hub_share`). A stream or status read that the gateway brought to a process
that does not read the request's partition is handed to the owner by nginx itself: the
answer is an empty response with `X-Accel-Redirect: /_chatlog/query/<owner>/<uri>`, which
nginx follows internally to that instance (`infra.gateway`), with the others as backups.
The client sees one response, from the owner: no extra relay hop, and nothing to resume.

Where no gateway routes the request (a client addressing an instance directly), or the
gateway already routed it here (the owner is down, this is its backup), a stream is
served here by adopting the partition (`Hub.adopt`); a status read is answered from what
this process has (Postgres, which lags the owner's hub by the projection's delay).
"""

from __future__ import annotations

from fastapi import Request, Response

from infra.gateway import OWNER_PREFIX
from query_api.deps import AppState

# Set by the gateway on every request it proxies: "gateway" from its listeners, "owner"
# once it redirected the request to its owner (then this process is its owner or a backup).
ROUTE_HEADER = "x-chatlog-route"


async def to_owner(
    state: AppState, request: Request, request_id: str, *, adopt: bool
) -> Response | None:
    """The redirect to the owner, or None to serve here (after adopting the request's
    partition when `adopt`). A request whose partition is unknown (older than what the
    hub remembers) is served here: Postgres has it."""
    owner = state.hub.owner(request_id)
    if owner is None or owner.partition < 0 or state.hub.reads(owner.partition):
        return None
    if request.headers.get(ROUTE_HEADER) == "gateway":
        target = state.hub.share.owner_of(owner.partition)
        raw = request.scope.get("raw_path") or request.url.path.encode()
        uri = f"{OWNER_PREFIX}/{target}{raw.decode('latin-1')}"
        if request.url.query:
            uri += "?" + request.url.query
        state.metrics.redirects.inc()
        return Response(status_code=200, headers={"X-Accel-Redirect": uri})
    if adopt:
        await state.hub.adopt(owner.partition)
    return None
