-- Read models (ARCHITECTURE §4). Idempotent: applying this file twice changes nothing.
-- Written only by the processors' projections; read by query_api and command_api.
CREATE SCHEMA IF NOT EXISTS chatlog;

CREATE TABLE IF NOT EXISTS chatlog.conversations (
    id               text PRIMARY KEY,
    user_id          text NOT NULL,
    title            text,
    status           text NOT NULL DEFAULT 'active',        -- active | deleted
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    last_request_id  text
);
CREATE INDEX IF NOT EXISTS conversations_user_updated
    ON chatlog.conversations (user_id, updated_at DESC, id DESC);

-- One row per (request, role): the user's prompt and the assistant's answer.
CREATE TABLE IF NOT EXISTS chatlog.messages (
    id               text PRIMARY KEY,                      -- request_id || ':' || role
    conversation_id  text NOT NULL,
    request_id       text NOT NULL,
    role             text NOT NULL,                         -- user | assistant
    content          text NOT NULL DEFAULT '',
    status           text NOT NULL,                         -- queued | streaming | finished | cancelled | failed
    attempt          integer NOT NULL DEFAULT 0,
    last_seq         integer NOT NULL DEFAULT -1,
    tokens           integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    search           tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    UNIQUE (request_id, role)
);
CREATE INDEX IF NOT EXISTS messages_conversation_created
    ON chatlog.messages (conversation_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS messages_search ON chatlog.messages USING gin (search);

-- The chunks of the winning (highest) attempt of each request, so a finished stream can be
-- resumed from any `Last-Event-ID: <attempt>:<seq>` with the exact same event ids.
CREATE TABLE IF NOT EXISTS chatlog.chunks (
    request_id       text NOT NULL,
    attempt          integer NOT NULL,
    seq              integer NOT NULL,
    text             text NOT NULL,
    token_count      integer NOT NULL,
    PRIMARY KEY (request_id, attempt, seq)
);

CREATE TABLE IF NOT EXISTS chatlog.completions (
    request_id       text PRIMARY KEY,
    conversation_id  text NOT NULL,
    user_id          text NOT NULL,
    status           text NOT NULL,                         -- queued | streaming | finished | cancelled | failed
    model            text NOT NULL,
    attempt          integer NOT NULL DEFAULT 0,
    finish_reason    text,
    usage            jsonb,
    ttft_ms          double precision,
    error            jsonb,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

-- The position a projection has folded, written in the same transaction as its rows.
CREATE TABLE IF NOT EXISTS chatlog.projection_checkpoints (
    projection       text NOT NULL,
    topic            text NOT NULL,
    partition        integer NOT NULL,
    "offset"         bigint NOT NULL,                       -- next offset to read
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);
