-- Conversations as trees (issue #15). Idempotent, additive only. Every request is a node:
-- `parent_request_id` is the request whose answer it follows (NULL: a first turn);
-- `origin_request_id` is the request that first asked its user message (itself, unless it
-- regenerates an answer), so the answers to one user message are the requests sharing an
-- origin, and the user messages after one answer are the distinct origins sharing a parent.
-- `branch` is PromptSubmitted.v2's marker (NULL | regenerate | edit). NULL parent/origin on
-- a row whose PromptSubmitted has not been folded yet (its completion events came first).
ALTER TABLE chatlog.completions ADD COLUMN IF NOT EXISTS parent_request_id text;
ALTER TABLE chatlog.completions ADD COLUMN IF NOT EXISTS origin_request_id text;
ALTER TABLE chatlog.completions ADD COLUMN IF NOT EXISTS branch text;
CREATE INDEX IF NOT EXISTS completions_parent
    ON chatlog.completions (conversation_id, parent_request_id);

-- The current branch's leaf: the newest prompt, or what BranchSwitched chose after it;
-- `current_at` is when it was set, so a redelivered older event does not win.
ALTER TABLE chatlog.conversations ADD COLUMN IF NOT EXISTS current_request_id text;
ALTER TABLE chatlog.conversations ADD COLUMN IF NOT EXISTS current_at timestamptz;
