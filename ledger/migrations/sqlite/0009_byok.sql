-- Bring your own key (issue 10), as on Postgres.
CREATE TABLE mw_provider_keys (
    id          TEXT PRIMARY KEY,
    wallet_id   TEXT NOT NULL REFERENCES mw_accounts (id),
    bot_id      TEXT,
    provider    TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    last4       TEXT NOT NULL CHECK (length(last4) <= 4),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at  TEXT
) STRICT;
CREATE UNIQUE INDEX mw_provider_keys_live ON mw_provider_keys (wallet_id, COALESCE(bot_id, ''), provider)
    WHERE revoked_at IS NULL;

INSERT INTO mw_accounts (id, kind, name, allow_negative) VALUES
    ('sys:fees', 'revenue', 'fees earned: the BYOK fee of calls forwarded with the caller''s own provider key', 0);

ALTER TABLE mw_usage ADD COLUMN provider_cost_nusd INTEGER CHECK (provider_cost_nusd >= 0);
ALTER TABLE mw_usage ADD COLUMN byok INTEGER NOT NULL DEFAULT 0 CHECK (byok IN (0, 1));
UPDATE mw_usage SET provider_cost_nusd = cost_nusd;
