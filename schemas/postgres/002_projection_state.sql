-- Projection bookkeeping added by processors (ARCHITECTURE §4). Idempotent, additive only:
-- the tables and columns of 001 are never renamed or dropped (query_api/command_api read them).
-- A rebuild applies these files to a fresh schema (every `chatlog.` rewritten), so keep
-- every name schema-qualified as `chatlog.`.

-- When the current title / last_request_id were set: a redelivered older rename or prompt
-- must not win over a newer one (idempotency across duplicates).
ALTER TABLE chatlog.conversations ADD COLUMN IF NOT EXISTS title_at timestamptz;
ALTER TABLE chatlog.conversations ADD COLUMN IF NOT EXISTS last_request_at timestamptz;

-- Conversations erased by ConversationDeleted. The two topics are read independently, so a
-- chunk of a deleted conversation may be read after its delete: the tombstone keeps it out.
CREATE TABLE IF NOT EXISTS chatlog.deleted_conversations (
    conversation_id  text PRIMARY KEY,
    deleted_at       timestamptz NOT NULL
);

-- Chunks that arrived after a gap in `seq` (within the winning attempt): held here, out of
-- `chunks` and out of the message text, until the missing chunk arrives.
CREATE TABLE IF NOT EXISTS chatlog.held_chunks (
    request_id       text NOT NULL,
    attempt          integer NOT NULL,
    seq              integer NOT NULL,
    text             text NOT NULL,
    token_count      integer NOT NULL,
    PRIMARY KEY (request_id, attempt, seq)
);

CREATE INDEX IF NOT EXISTS completions_conversation ON chatlog.completions (conversation_id);
