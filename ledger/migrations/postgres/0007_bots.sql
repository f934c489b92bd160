-- Bots and spend limits (issue 10). A bot is a named consumer of a wallet (a
-- support bot, a code reviewer); its keys are held against its daily, monthly
-- and per-conversation caps. A key has its own lifetime, daily and monthly
-- spend limits. Every cap's running total is a row of mw_spend_caps (0003).
CREATE TABLE mw_bots (
    id                    text PRIMARY KEY,
    wallet_id             text NOT NULL REFERENCES mw_accounts (id),
    name                  text NOT NULL,
    daily_cap_nusd        bigint CHECK (daily_cap_nusd IS NULL OR daily_cap_nusd >= 0),
    monthly_cap_nusd      bigint CHECK (monthly_cap_nusd IS NULL OR monthly_cap_nusd >= 0),
    conversation_cap_nusd bigint CHECK (conversation_cap_nusd IS NULL OR conversation_cap_nusd >= 0),
    -- Set: a refused request is answered by this assistant message, free, instead of a 402.
    friendly_message      text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    deleted_at            timestamptz
);
CREATE UNIQUE INDEX mw_bots_name ON mw_bots (wallet_id, name) WHERE deleted_at IS NULL;

ALTER TABLE mw_keys ADD COLUMN bot_id text REFERENCES mw_bots (id);
ALTER TABLE mw_keys ADD COLUMN total_limit_nusd bigint CHECK (total_limit_nusd IS NULL OR total_limit_nusd >= 0);
ALTER TABLE mw_keys ADD COLUMN daily_limit_nusd bigint CHECK (daily_limit_nusd IS NULL OR daily_limit_nusd >= 0);
ALTER TABLE mw_keys ADD COLUMN monthly_limit_nusd bigint
    CHECK (monthly_limit_nusd IS NULL OR monthly_limit_nusd >= 0);
CREATE INDEX mw_keys_bot ON mw_keys (bot_id) WHERE bot_id IS NOT NULL;
