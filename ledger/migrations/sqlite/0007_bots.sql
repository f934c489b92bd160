-- Bots and spend limits (issue 10), as on Postgres.
CREATE TABLE mw_bots (
    id                    TEXT PRIMARY KEY,
    wallet_id             TEXT NOT NULL REFERENCES mw_accounts (id),
    name                  TEXT NOT NULL,
    daily_cap_nusd        INTEGER CHECK (daily_cap_nusd IS NULL OR daily_cap_nusd >= 0),
    monthly_cap_nusd      INTEGER CHECK (monthly_cap_nusd IS NULL OR monthly_cap_nusd >= 0),
    conversation_cap_nusd INTEGER CHECK (conversation_cap_nusd IS NULL OR conversation_cap_nusd >= 0),
    -- Set: a refused request is answered by this assistant message, free, instead of a 402.
    friendly_message      TEXT,
    created_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    deleted_at            TEXT
);
CREATE UNIQUE INDEX mw_bots_name ON mw_bots (wallet_id, name) WHERE deleted_at IS NULL;

ALTER TABLE mw_keys ADD COLUMN bot_id TEXT REFERENCES mw_bots (id);
ALTER TABLE mw_keys ADD COLUMN total_limit_nusd INTEGER CHECK (total_limit_nusd IS NULL OR total_limit_nusd >= 0);
ALTER TABLE mw_keys ADD COLUMN daily_limit_nusd INTEGER CHECK (daily_limit_nusd IS NULL OR daily_limit_nusd >= 0);
ALTER TABLE mw_keys ADD COLUMN monthly_limit_nusd INTEGER
    CHECK (monthly_limit_nusd IS NULL OR monthly_limit_nusd >= 0);
CREATE INDEX mw_keys_bot ON mw_keys (bot_id) WHERE bot_id IS NOT NULL;
