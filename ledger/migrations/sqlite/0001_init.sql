-- Meterway ledger, SQLite (the embedded default). Same rules as Postgres:
-- balanced transfers by construction, balances kept by a trigger, no
-- overdraft except on allow_negative accounts, transfers append-only.

CREATE TABLE mw_accounts (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('wallet', 'revenue', 'funding', 'shortfall')),
    name            TEXT,
    balance_nusd    INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 0,
    allow_negative  INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT mw_accounts_no_overdraft CHECK (allow_negative OR balance_nusd >= 0)
) STRICT;

CREATE TABLE mw_transfers (
    id              TEXT PRIMARY KEY,
    debit_account   TEXT NOT NULL REFERENCES mw_accounts (id),
    credit_account  TEXT NOT NULL REFERENCES mw_accounts (id),
    amount_nusd     INTEGER NOT NULL CHECK (amount_nusd > 0),
    kind            TEXT NOT NULL CHECK (kind IN ('deposit', 'adjustment', 'usage', 'shortfall')),
    request_id      TEXT,
    memo            TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK (debit_account <> credit_account)
) STRICT;
CREATE INDEX mw_transfers_debit ON mw_transfers (debit_account, created_at);
CREATE INDEX mw_transfers_credit ON mw_transfers (credit_account, created_at);

CREATE TRIGGER mw_transfers_apply AFTER INSERT ON mw_transfers
BEGIN
    UPDATE mw_accounts SET balance_nusd = balance_nusd - NEW.amount_nusd, version = version + 1
     WHERE id = NEW.debit_account;
    UPDATE mw_accounts SET balance_nusd = balance_nusd + NEW.amount_nusd, version = version + 1
     WHERE id = NEW.credit_account;
END;
CREATE TRIGGER mw_transfers_no_update BEFORE UPDATE ON mw_transfers
BEGIN SELECT RAISE(ABORT, 'mw_transfers is append-only'); END;
CREATE TRIGGER mw_transfers_no_delete BEFORE DELETE ON mw_transfers
BEGIN SELECT RAISE(ABORT, 'mw_transfers is append-only'); END;

CREATE TABLE mw_usage (
    request_id                TEXT PRIMARY KEY,
    key_id                    TEXT NOT NULL,
    wallet_id                 TEXT NOT NULL REFERENCES mw_accounts (id),
    bot                       TEXT,
    model                     TEXT NOT NULL,
    upstream                  TEXT NOT NULL,
    endpoint                  TEXT NOT NULL,
    status                    TEXT NOT NULL,
    usage_source              TEXT NOT NULL,
    prompt_tokens             INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    cached_tokens             INTEGER NOT NULL CHECK (cached_tokens >= 0),
    completion_tokens         INTEGER NOT NULL CHECK (completion_tokens >= 0),
    input_per_1m_nusd         INTEGER NOT NULL,
    cached_input_per_1m_nusd  INTEGER NOT NULL,
    output_per_1m_nusd        INTEGER NOT NULL,
    per_call_nusd             INTEGER NOT NULL,
    cost_nusd                 INTEGER NOT NULL CHECK (cost_nusd >= 0),
    charged_nusd              INTEGER NOT NULL CHECK (charged_nusd >= 0),
    shortfall_nusd            INTEGER NOT NULL CHECK (shortfall_nusd >= 0),
    held_nusd                 INTEGER NOT NULL CHECK (held_nusd >= 0),
    latency_ms                REAL NOT NULL,
    upstream_latency_ms       REAL NOT NULL,
    created_at                TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK (charged_nusd + shortfall_nusd = cost_nusd)
) STRICT;
CREATE INDEX mw_usage_wallet ON mw_usage (wallet_id, created_at);
CREATE INDEX mw_usage_key ON mw_usage (key_id, created_at);

CREATE TABLE mw_keys (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    wallet_id   TEXT NOT NULL REFERENCES mw_accounts (id),
    name        TEXT,
    bot         TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at  TEXT
) STRICT;

INSERT INTO mw_accounts (id, kind, name, allow_negative) VALUES
    ('sys:revenue', 'revenue', 'usage revenue', 0),
    ('sys:funding', 'funding', 'money that entered from outside (deposits, operator credits)', 1),
    ('sys:shortfall', 'shortfall', 'usage that could not be charged to a wallet (receivable)', 1);
