-- Usage metering (issue #18): written only by the `usage` projection (processors/usage),
-- read by query_api (GET /v1/usage) and command_api (token quotas). Idempotent, additive.
-- One row per request: its prompt's user/model/day (from chat.conversations) joined to its
-- highest attempt's final (from chat.answers). A row whose prompt is not read yet has a
-- NULL user_id and counts nowhere. Usage survives ConversationDeleted: tokens were spent.
CREATE TABLE IF NOT EXISTS chatlog.usage_requests (
    request_id         text PRIMARY KEY,
    user_id            text,
    model              text,
    day                date,                                -- UTC day of the prompt
    attempt            integer NOT NULL DEFAULT 0,          -- the final's attempt (0: none yet)
    outcome            text,                                -- finished | cancelled | failed | NULL
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS usage_requests_user_day ON chatlog.usage_requests (user_id, day);

-- The per user, model and day totals the API serves.
CREATE OR REPLACE VIEW chatlog.usage_daily AS
SELECT user_id, model, day,
       count(*)::bigint                                    AS requests,
       sum(prompt_tokens)::bigint                          AS prompt_tokens,
       sum(completion_tokens)::bigint                      AS completion_tokens,
       count(*) FILTER (WHERE outcome = 'cancelled')::bigint AS cancelled,
       count(*) FILTER (WHERE outcome = 'failed')::bigint    AS failed
FROM chatlog.usage_requests
WHERE user_id IS NOT NULL
GROUP BY user_id, model, day;
