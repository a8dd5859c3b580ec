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

-- Rows folded before the tree (no origin yet) get the v1 reading: each request its own
-- origin, its parent the conversation's previous request. Without it a read model
-- upgraded in place would show (and continue from) only each conversation's last turn.
-- A rebuild gives the log's exact parents (v1's explicit parent_request_id forks too).
-- After the first run only a row whose prompt is not folded yet matches; its prompt
-- overwrites the guess when it is folded.
UPDATE chatlog.completions c
   SET origin_request_id = c.request_id,
       parent_request_id = (
           SELECT p.request_id FROM chatlog.completions p
            WHERE p.conversation_id = c.conversation_id
              AND (p.created_at, p.request_id) < (c.created_at, c.request_id)
            ORDER BY p.created_at DESC, p.request_id DESC LIMIT 1)
 WHERE c.origin_request_id IS NULL;
