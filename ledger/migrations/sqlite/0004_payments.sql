-- Card top-ups (issue 9), as on Postgres: the money card payments move, the
-- Stripe events already applied, auto-reload and the owner's notifications.

INSERT INTO mw_transfer_kinds (kind, description) VALUES
    ('card_refund', 'a card payment refunded by the card network: its credit taken back out'),
    ('chargeback', 'a card payment disputed by the cardholder: its credit taken back out');

-- Discounts are paid by their own account, so a discounted top-up is two
-- balanced postings: the paid part from sys:funding, the discount from here.
INSERT INTO mw_accounts (id, kind, name, allow_negative) VALUES
    ('sys:discounts', 'funding', 'top-up discounts given (the part of a credit nobody paid)', 1);

ALTER TABLE mw_deposits ADD COLUMN discount_nusd INTEGER NOT NULL DEFAULT 0 CHECK (discount_nusd >= 0);
ALTER TABLE mw_deposits ADD COLUMN payment_ref TEXT;
ALTER TABLE mw_deposits ADD COLUMN customer_ref TEXT;
ALTER TABLE mw_deposits ADD COLUMN tier TEXT;
ALTER TABLE mw_deposits ADD COLUMN purpose TEXT NOT NULL DEFAULT 'topup'
    CHECK (purpose IN ('topup', 'auto_reload', 'keyless'));
ALTER TABLE mw_deposits ADD COLUMN paid_cents INTEGER CHECK (paid_cents IS NULL OR paid_cents >= 0);
ALTER TABLE mw_deposits ADD COLUMN credit_expires_at TEXT;
CREATE UNIQUE INDEX mw_deposits_payment_ref ON mw_deposits (payment_ref);

-- Stripe events whose effect is done; an effect is idempotent, so the row comes after it.
CREATE TABLE mw_payment_events (
    id            TEXT PRIMARY KEY,
    type          TEXT NOT NULL,
    processed_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- One row per wallet that has ever set auto-reload; in_flight_deposit_id is the
-- claim that lets one reload run at a time across every gateway process.
CREATE TABLE mw_auto_reload (
    wallet_id             TEXT PRIMARY KEY REFERENCES mw_accounts (id),
    enabled               INTEGER NOT NULL DEFAULT 0,
    threshold_nusd        INTEGER NOT NULL CHECK (threshold_nusd >= 0),
    amount_nusd           INTEGER NOT NULL CHECK (amount_nusd > 0),
    customer_ref          TEXT,
    payment_method_ref    TEXT,
    paused_reason         TEXT,
    in_flight_deposit_id  TEXT REFERENCES mw_deposits (id),
    updated_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE mw_notifications (
    id          TEXT PRIMARY KEY,
    wallet_id   TEXT NOT NULL REFERENCES mw_accounts (id),
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX mw_notifications_wallet ON mw_notifications (wallet_id, created_at);

-- Keyless purchase (AiSpace's "Secure Key"): an anonymous buyer's wallet, whose keys are
-- made when the holder of the paid session asks for them, once; the recovery code
-- (hashed) issues fresh keys later, revoking the ones before.
CREATE TABLE mw_keyless (
    deposit_id         TEXT PRIMARY KEY REFERENCES mw_deposits (id),
    wallet_id          TEXT NOT NULL REFERENCES mw_accounts (id),
    recovery_hash      TEXT NOT NULL,
    revealed_at        TEXT,
    key_id             TEXT,
    management_key_id  TEXT,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
