"""Schema `command`: the command side's own state (never a read model).

- `conversations`: who owns a conversation and its newest request (optimistic concurrency
  for continuations: two prompts racing on one conversation cannot both win).
- `requests`: who owns a request; also the sliding-window log the rate limits count.
- `idempotency_keys`: per (user, key) the body hash and the response, for 24 h; and, from
  before its admission, the request's encoded PromptSubmitted (`event`, `event_headers`), so
  a retry after a crash between admission and Kafka's ack can append it (again) itself.
- `command.admit(...)`: the atomic admission of one prompt (rate limit, concurrency cap,
  conversation ownership/concurrency, request row) under a per-user advisory lock, so every
  command API process shares the limits and one round trip decides. The cap counts leased
  slots: a prompt holds one until the read model shows it terminal, or until its lease
  (`generation_lease_s`, renewed by progress the read model shows) runs out, so a stopped
  projection cannot lock users out. (The lease is a new last parameter: processes of the
  previous version keep calling the previous overloads during a rolling restart.)
- `command.admit_prompt(...)`: `command.admit` that also resolves the caller's API key when
  the process has no cached user for it, so a prompt costs one round trip either way.
- `command.admit_batch(...)`: many `admit_prompt`s in one transaction (group commit, see
  `batching.py`), deadlock-free; set-wise (a few statements per batch) when its users are
  distinct.
"""

from __future__ import annotations

from typing import Any

import psycopg

from infra.auth import apply_auth_ddl

ADVISORY_LOCK_DDL = 774413  # beside infra's 774411 (read models) and 774412 (auth)

COMMAND_DDL = """
CREATE SCHEMA IF NOT EXISTS command;

CREATE TABLE IF NOT EXISTS command.conversations (
    id               text PRIMARY KEY,
    user_id          text NOT NULL,
    last_request_id  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);

CREATE TABLE IF NOT EXISTS command.requests (
    request_id           text PRIMARY KEY,
    user_id              text NOT NULL,
    conversation_id      text NOT NULL,
    created_at           timestamptz NOT NULL,
    cancel_requested_at  timestamptz
);
CREATE INDEX IF NOT EXISTS requests_user_created ON command.requests (user_id, created_at);

CREATE TABLE IF NOT EXISTS command.idempotency_keys (
    user_id          text NOT NULL,
    key              text NOT NULL,
    body_hash        text NOT NULL,
    request_id       text NOT NULL,
    state            text NOT NULL,                 -- pending | done
    response         jsonb,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON command.idempotency_keys (created_at);
ALTER TABLE command.idempotency_keys ADD COLUMN IF NOT EXISTS event bytea;
ALTER TABLE command.idempotency_keys ADD COLUMN IF NOT EXISTS event_headers jsonb;

CREATE OR REPLACE FUNCTION command.admit(
    p_user text, p_request text, p_conversation text, p_new boolean, p_expected_last text,
    p_limit integer, p_window_s double precision, p_cap integer, p_horizon_s double precision,
    p_lease_s double precision
) RETURNS TABLE (verdict text, used integer, oldest_age_s double precision, running integer)
LANGUAGE plpgsql AS $$
DECLARE
    t         timestamptz;
    v_used    integer := 0;
    v_oldest  timestamptz;
    v_running integer := 0;
BEGIN
    -- Serialises one user's admissions (across processes) for the rest of the transaction;
    -- other users never wait on it. Two-int form: a key space apart from bigint locks.
    PERFORM pg_advisory_xact_lock(7744, hashtext(p_user));
    t := clock_timestamp();
    IF p_limit > 0 THEN
        SELECT count(*), min(r.created_at) INTO v_used, v_oldest FROM command.requests r
         WHERE r.user_id = p_user AND r.created_at > t - make_interval(secs => p_window_s);
        IF v_used >= p_limit THEN
            RETURN QUERY SELECT 'rate_limited'::text, v_used,
                extract(epoch FROM t - v_oldest)::double precision, 0;
            RETURN;
        END IF;
    END IF;
    IF p_cap > 0 THEN
        -- A slot per admitted prompt, held until the read model shows it terminal or its
        -- lease runs out: admitted less than p_lease_s ago, or with progress in the read
        -- model that recent. A stopped projection so frees every slot within the lease.
        SELECT count(*) INTO v_running FROM command.requests r
         WHERE r.user_id = p_user AND r.created_at > t - make_interval(secs => p_horizon_s)
           AND NOT EXISTS (SELECT 1 FROM chatlog.completions c
                            WHERE c.request_id = r.request_id
                              AND c.status IN ('finished', 'cancelled', 'failed'))
           AND (r.created_at > t - make_interval(secs => p_lease_s)
                OR EXISTS (SELECT 1 FROM chatlog.completions c
                            WHERE c.request_id = r.request_id
                              AND c.updated_at > t - make_interval(secs => p_lease_s)));
        IF v_running >= p_cap THEN
            RETURN QUERY SELECT 'too_many_generations'::text, v_used,
                extract(epoch FROM t - coalesce(v_oldest, t))::double precision, v_running;
            RETURN;
        END IF;
    END IF;
    IF p_new THEN
        INSERT INTO command.conversations (id, user_id, last_request_id, created_at)
        VALUES (p_conversation, p_user, p_request, t);
    ELSE
        UPDATE command.conversations SET last_request_id = p_request
         WHERE id = p_conversation AND user_id = p_user AND deleted_at IS NULL
           AND last_request_id IS NOT DISTINCT FROM p_expected_last;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'conversation_busy'::text, v_used,
                extract(epoch FROM t - coalesce(v_oldest, t))::double precision, v_running;
            RETURN;
        END IF;
    END IF;
    INSERT INTO command.requests (request_id, user_id, conversation_id, created_at)
    VALUES (p_request, p_user, p_conversation, t);
    RETURN QUERY SELECT 'ok'::text, v_used + 1,
        extract(epoch FROM t - coalesce(v_oldest, t))::double precision, v_running + 1;
END
$$;

-- p_user NULL: resolve it from the key hash first ('unauthorized' when no live key).
-- A new name rather than a new signature for command.admit, so processes still running the
-- previous version keep working during a rolling restart.
CREATE OR REPLACE FUNCTION command.admit_prompt(
    p_key_hash text, p_user text, p_request text, p_conversation text, p_new boolean,
    p_expected_last text, p_limit integer, p_window_s double precision, p_cap integer,
    p_horizon_s double precision, p_lease_s double precision
) RETURNS TABLE (verdict text, used integer, oldest_age_s double precision, running integer,
                 user_id text)
LANGUAGE plpgsql AS $$
DECLARE
    v_user text := p_user;
BEGIN
    IF v_user IS NULL THEN
        SELECT k.user_id INTO v_user FROM command.api_keys k
         WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL;
        IF v_user IS NULL THEN
            RETURN QUERY SELECT 'unauthorized'::text, 0, 0::double precision, 0, NULL::text;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT a.verdict, a.used, a.oldest_age_s, a.running, v_user
        FROM command.admit(v_user, p_request, p_conversation, p_new, p_expected_last,
                           p_limit, p_window_s, p_cap, p_horizon_s, p_lease_s) a;
END
$$;

-- Several admissions in one transaction (group commit), each decided exactly as
-- admit_prompt would decide it, one after the other; results by input position (ord).
-- Users are locked in one global order (their lock key, hashtext), so two concurrent batches
-- cannot deadlock; a single admission holds one lock only, so it cannot take part in a
-- cycle either. Keys are resolved by a scalar subquery per item (an index lookup): a join
-- there was planned as a hash join over every key (a set-returning function is estimated
-- at 1,000 rows), milliseconds per batch.
-- When every user occurs once, the admissions are independent (their counts, conversations
-- and rows are disjoint), so they are decided set-wise: one lock pass, then one statement
-- that counts every user's windows and writes every row, a few executor runs per batch
-- instead of ~8 per admission. A user twice in the batch falls back to one admit per item,
-- so the second sees the first's row and conversation update.
CREATE OR REPLACE FUNCTION command.admit_batch(
    p_key_hashes text[], p_users text[], p_requests text[], p_conversations text[],
    p_new boolean[], p_expected_last text[], p_limit integer, p_window_s double precision,
    p_cap integer, p_horizon_s double precision, p_lease_s double precision
) RETURNS TABLE (ord integer, verdict text, used integer, oldest_age_s double precision,
                 running integer, user_id text)
-- Every access here is by key: an index is always right. Without this, a plan cached while
-- a table was small (a fresh database) scans every conversation per batch until the next
-- ANALYZE replans it (seen: 20 ms per batch at 60,000 conversations).
SET enable_seqscan = off
LANGUAGE plpgsql AS $$
DECLARE
    v_uids  text[];
    v_lock  integer;
    rec     record;
    t       timestamptz;
BEGIN
    SELECT array_agg(coalesce(p_users[i.n],
                              (SELECT k.user_id FROM command.api_keys k
                                WHERE k.key_hash = p_key_hashes[i.n] AND k.revoked_at IS NULL))
                     ORDER BY i.n)
      INTO v_uids
      FROM generate_subscripts(p_requests, 1) AS i(n);
    IF (SELECT count(DISTINCT u) < count(u) FROM unnest(v_uids) AS u) THEN
        FOR rec IN
            SELECT i.n, v_uids[i.n] AS uid FROM generate_subscripts(v_uids, 1) AS i(n)
             ORDER BY hashtext(v_uids[i.n]), i.n
        LOOP
            IF rec.uid IS NULL THEN
                RETURN QUERY SELECT rec.n, 'unauthorized'::text, 0, 0::double precision, 0,
                                    NULL::text;
            ELSE
                RETURN QUERY SELECT rec.n, a.verdict, a.used, a.oldest_age_s, a.running, rec.uid
                    FROM command.admit(rec.uid, p_requests[rec.n], p_conversations[rec.n],
                                       p_new[rec.n], p_expected_last[rec.n], p_limit,
                                       p_window_s, p_cap, p_horizon_s, p_lease_s) a;
            END IF;
        END LOOP;
        RETURN;
    END IF;
    FOR v_lock IN SELECT DISTINCT hashtext(u) FROM unnest(v_uids) AS u WHERE u IS NOT NULL
                   ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(7744, v_lock);
    END LOOP;
    -- After the locks: this statement's snapshot sees every admission that held them before.
    t := clock_timestamp();
    RETURN QUERY
    WITH items AS (
        SELECT i.n, v_uids[i.n] AS uid, p_requests[i.n] AS req, p_conversations[i.n] AS conv,
               p_new[i.n] AS is_new, p_expected_last[i.n] AS expected
          FROM generate_subscripts(p_requests, 1) AS i(n)
    ), decided AS (
        SELECT it.*, w.used, w.oldest, g.running,
               CASE WHEN it.uid IS NULL THEN 'unauthorized'
                    WHEN p_limit > 0 AND w.used >= p_limit THEN 'rate_limited'
                    WHEN p_cap > 0 AND g.running >= p_cap THEN 'too_many_generations'
               END AS refused
          FROM items it
          LEFT JOIN LATERAL (
              SELECT count(*)::integer AS used, min(r.created_at) AS oldest
                FROM command.requests r
               WHERE p_limit > 0 AND r.user_id = it.uid
                 AND r.created_at > t - make_interval(secs => p_window_s)
          ) w ON true
          LEFT JOIN LATERAL (
              SELECT count(*)::integer AS running FROM command.requests r
               WHERE p_cap > 0 AND r.user_id = it.uid
                 AND r.created_at > t - make_interval(secs => p_horizon_s)
                 AND NOT EXISTS (SELECT 1 FROM chatlog.completions c
                                  WHERE c.request_id = r.request_id
                                    AND c.status IN ('finished', 'cancelled', 'failed'))
                 AND (r.created_at > t - make_interval(secs => p_lease_s)  -- as in admit
                      OR EXISTS (SELECT 1 FROM chatlog.completions c
                                  WHERE c.request_id = r.request_id
                                    AND c.updated_at > t - make_interval(secs => p_lease_s)))
          ) g ON true
    ), created AS (
        INSERT INTO command.conversations (id, user_id, last_request_id, created_at)
        SELECT d.conv, d.uid, d.req, t FROM decided d WHERE d.refused IS NULL AND d.is_new
    ), moved AS (
        UPDATE command.conversations c SET last_request_id = d.req
          FROM decided d
         WHERE c.id = ANY (p_conversations)  -- an index scan, not every conversation
           AND d.refused IS NULL AND NOT d.is_new AND c.id = d.conv AND c.user_id = d.uid
           AND c.deleted_at IS NULL AND c.last_request_id IS NOT DISTINCT FROM d.expected
        RETURNING d.n
    ), final AS (
        SELECT d.*, coalesce(d.refused, CASE WHEN d.is_new OR m.n IS NOT NULL THEN 'ok'
                                             ELSE 'conversation_busy' END) AS v
          FROM decided d LEFT JOIN moved m ON m.n = d.n
    ), admitted AS (
        INSERT INTO command.requests (request_id, user_id, conversation_id, created_at)
        SELECT f.req, f.uid, f.conv, t FROM final f WHERE f.v = 'ok'
    )
    SELECT f.n, f.v,
           CASE f.v WHEN 'unauthorized' THEN 0 WHEN 'ok' THEN f.used + 1 ELSE f.used END,
           CASE f.v WHEN 'unauthorized' THEN 0::double precision
                ELSE extract(epoch FROM t - coalesce(f.oldest, t))::double precision END,
           CASE WHEN f.v IN ('unauthorized', 'rate_limited') THEN 0
                WHEN f.v = 'ok' THEN f.running + 1 ELSE f.running END,
           f.uid
      FROM final f;
END
$$;
"""


def apply_command_ddl(conn: psycopg.Connection[Any]) -> None:
    """Create schema `command` (api keys included) where missing; idempotent and race-safe."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_DDL,))
        apply_auth_ddl(conn)
        conn.execute(COMMAND_DDL)  # type: ignore[arg-type]  # trusted constant
