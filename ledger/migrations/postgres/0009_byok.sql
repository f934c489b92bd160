-- Bring your own key (issue 10). A wallet, or one of its bots, stores its own
-- provider keys, sealed (AES-256-GCM under a master key the database never
-- sees: gateway/money/secrets_box.py); only the last four characters are kept
-- in clear, as a hint. bot_id names a bot (mw_bots) without a foreign key: a
-- key outlives the bot it was stored for, as a revoked row.
CREATE TABLE mw_provider_keys (
    id          text PRIMARY KEY,
    wallet_id   text NOT NULL REFERENCES mw_accounts (id),
    bot_id      text,
    provider    text NOT NULL,   -- a [providers] name of the configuration
    sealed      text NOT NULL,   -- mwk1.<master key id>.<nonce | ciphertext | tag>: never the key
    last4       text NOT NULL CHECK (length(last4) <= 4),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
-- One live key per wallet, bot (or none) and provider: storing another revokes it.
CREATE UNIQUE INDEX mw_provider_keys_live ON mw_provider_keys (wallet_id, COALESCE(bot_id, ''), provider)
    WHERE revoked_at IS NULL;

-- A BYOK call pays no provider cost, only the BYOK fee (if any), to its own account.
INSERT INTO mw_accounts (id, kind, name, allow_negative) VALUES
    ('sys:fees', 'revenue', 'fees earned: the BYOK fee of calls forwarded with the caller''s own provider key', false);

-- Every usage row keeps what the provider's price list says the call cost
-- (provider_cost_nusd) beside what the wallet paid (cost_nusd): equal for a
-- plain call, the fee (or 0) for a BYOK call. NULL: settled from a journal
-- line older than this migration.
ALTER TABLE mw_usage ADD COLUMN provider_cost_nusd bigint CHECK (provider_cost_nusd >= 0);
ALTER TABLE mw_usage ADD COLUMN byok boolean NOT NULL DEFAULT false;
UPDATE mw_usage SET provider_cost_nusd = cost_nusd;
