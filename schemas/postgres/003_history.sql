-- A first prompt stores the whole context its client sent ([system, user, assistant, user]),
-- so one request may own several messages of one role: (request_id, role) is no longer
-- unique. Ids stay unique (`<request_id>:user`, `<request_id>:assistant`,
-- `<request_id>:ctx<i>`); the lookups by request keep an index. Idempotent.
ALTER TABLE chatlog.messages DROP CONSTRAINT IF EXISTS messages_request_id_role_key;
CREATE INDEX IF NOT EXISTS messages_request_role ON chatlog.messages (request_id, role);
