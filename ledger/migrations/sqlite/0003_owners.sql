-- Wallet owners (issue 8), as on Postgres: organisations, roles, members, management keys,
-- one-time invitations, rail-agnostic deposits, spend caps, and the transfer
-- kinds a wallet's history names. A kind that a later feature writes (payout,
-- reward, ...) is only a row here: the history shows it without code changes.

INSERT INTO mw_transfer_kinds (kind, description) VALUES
    ('refund', 'money returned to a wallet, e.g. a failed request''s charge'),
    ('discount', 'the part of a discounted top-up the customer did not pay'),
    ('reward', 'credit given, not bought (a promotion, a referral)'),
    ('expiry', 'prepaid credit that expired unused'),
    ('earning', 'a creator''s share of others'' usage'),
    ('payout', 'money paid out of a wallet to its owner (reversible)');

-- One organisation per wallet: the wallet id is the organisation's id.
CREATE TABLE mw_orgs (
    wallet_id         TEXT PRIMARY KEY REFERENCES mw_accounts (id),
    name              TEXT NOT NULL,
    low_balance_nusd  INTEGER CHECK (low_balance_nusd IS NULL OR low_balance_nusd >= 0),
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE mw_roles (
    role         TEXT PRIMARY KEY,
    description  TEXT NOT NULL
) STRICT;
INSERT INTO mw_roles (role, description) VALUES
    ('owner', 'members, keys, caps, top-ups, settings'),
    ('developer', 'its own inference keys and its own usage'),
    ('viewer', 'reads only');

CREATE TABLE mw_members (
    id                  TEXT PRIMARY KEY,
    wallet_id           TEXT NOT NULL REFERENCES mw_orgs (wallet_id),
    name                TEXT NOT NULL,
    role                TEXT NOT NULL REFERENCES mw_roles (role),
    status              TEXT NOT NULL CHECK (status IN ('invited', 'active', 'removed')),
    monthly_limit_nusd  INTEGER CHECK (monthly_limit_nusd IS NULL OR monthly_limit_nusd >= 0),
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    joined_at           TEXT,
    removed_at          TEXT
) STRICT;
CREATE INDEX mw_members_wallet ON mw_members (wallet_id);

CREATE TABLE mw_management_keys (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    member_id    TEXT NOT NULL REFERENCES mw_members (id),
    name         TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at   TEXT
) STRICT;
CREATE INDEX mw_management_keys_member ON mw_management_keys (member_id);

CREATE TABLE mw_invites (
    id           TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    member_id    TEXT NOT NULL REFERENCES mw_members (id),
    expires_at   TEXT NOT NULL,
    accepted_at  TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

ALTER TABLE mw_keys ADD COLUMN member_id TEXT REFERENCES mw_members (id);
CREATE INDEX mw_keys_member ON mw_keys (member_id);
CREATE INDEX mw_keys_wallet ON mw_keys (wallet_id);

CREATE TABLE mw_deposits (
    id                    TEXT PRIMARY KEY,
    wallet_id             TEXT NOT NULL REFERENCES mw_accounts (id),
    method                TEXT NOT NULL,
    amount_credited_nusd  INTEGER NOT NULL CHECK (amount_credited_nusd > 0),
    paid_amount           TEXT NOT NULL,
    paid_currency         TEXT NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'expired', 'failed', 'refunded')),
    external_ref          TEXT UNIQUE,
    created_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    completed_at          TEXT
) STRICT;
CREATE INDEX mw_deposits_wallet ON mw_deposits (wallet_id, created_at);

CREATE TABLE mw_spend_caps (
    id          TEXT PRIMARY KEY,
    limit_nusd  INTEGER CHECK (limit_nusd IS NULL OR limit_nusd >= 0),
    spent_nusd  INTEGER NOT NULL DEFAULT 0 CHECK (spent_nusd >= 0),
    version     INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
