-- The conversation a request named (X-Conversation-Id), kept on its usage row: a bot's
-- per-conversation cap opens from it like every other cap opens from its window's usage.
ALTER TABLE mw_usage ADD COLUMN conversation_id text;
CREATE INDEX mw_usage_conversation ON mw_usage (conversation_id) WHERE conversation_id IS NOT NULL;
