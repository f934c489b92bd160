-- Wallet owners (issue 8): organisations, roles, members, management keys,
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
    wallet_id         text PRIMARY KEY REFERENCES mw_accounts (id),
    name              text NOT NULL,
    low_balance_nusd  bigint CHECK (low_balance_nusd IS NULL OR low_balance_nusd >= 0),
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mw_roles (
    role         text PRIMARY KEY,
    description  text NOT NULL
);
INSERT INTO mw_roles (role, description) VALUES
    ('owner', 'members, keys, caps, top-ups, settings'),
    ('developer', 'its own inference keys and its own usage'),
    ('viewer', 'reads only');

CREATE TABLE mw_members (
    id                  text PRIMARY KEY,
    wallet_id           text NOT NULL REFERENCES mw_orgs (wallet_id),
    name                text NOT NULL,
    role                text NOT NULL REFERENCES mw_roles (role),
    status              text NOT NULL CHECK (status IN ('invited', 'active', 'removed')),
    monthly_limit_nusd  bigint CHECK (monthly_limit_nusd IS NULL OR monthly_limit_nusd >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    joined_at           timestamptz,
    removed_at          timestamptz
);
CREATE INDEX mw_members_wallet ON mw_members (wallet_id);

CREATE TABLE mw_management_keys (
    id           text PRIMARY KEY,
    secret_hash  text NOT NULL UNIQUE,
    prefix       text NOT NULL,
    member_id    text NOT NULL REFERENCES mw_members (id),
    name         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX mw_management_keys_member ON mw_management_keys (member_id);

CREATE TABLE mw_invites (
    id           text PRIMARY KEY,
    token_hash   text NOT NULL UNIQUE,
    member_id    text NOT NULL REFERENCES mw_members (id),
    expires_at   timestamptz NOT NULL,
    accepted_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE mw_keys ADD COLUMN member_id text REFERENCES mw_members (id);
CREATE INDEX mw_keys_member ON mw_keys (member_id);
CREATE INDEX mw_keys_wallet ON mw_keys (wallet_id);

CREATE TABLE mw_deposits (
    id                    text PRIMARY KEY,
    wallet_id             text NOT NULL REFERENCES mw_accounts (id),
    method                text NOT NULL,
    amount_credited_nusd  bigint NOT NULL CHECK (amount_credited_nusd > 0),
    paid_amount           text NOT NULL,
    paid_currency         text NOT NULL,
    status                text NOT NULL CHECK (status IN ('pending', 'completed', 'expired', 'failed', 'refunded')),
    external_ref          text UNIQUE,
    created_at            timestamptz NOT NULL DEFAULT now(),
    completed_at          timestamptz
);
CREATE INDEX mw_deposits_wallet ON mw_deposits (wallet_id, created_at);

CREATE TABLE mw_spend_caps (
    id          text PRIMARY KEY,
    limit_nusd  bigint CHECK (limit_nusd IS NULL OR limit_nusd >= 0),
    spent_nusd  bigint NOT NULL DEFAULT 0 CHECK (spent_nusd >= 0),
    version     bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
