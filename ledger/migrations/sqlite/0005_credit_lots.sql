-- Credit validity (issue 9), as on Postgres: lots of credit that expire, consumed lazily (ledger/lots.py).
-- Nothing here touches mw_transfers or settlement: a reconcile reads a wallet's
-- transfers after the fact and keeps its answer in these two tables.

-- Per wallet with lots: where its last reconcile left off.
CREATE TABLE mw_lot_wallets (
    wallet_id         TEXT PRIMARY KEY REFERENCES mw_accounts (id),
    balance_nusd      INTEGER NOT NULL CHECK (balance_nusd >= 0),
    version           INTEGER NOT NULL CHECK (version >= 0),
    tail_start        TEXT NOT NULL,
    tail_count        INTEGER NOT NULL CHECK (tail_count >= 0),
    tail_debits_nusd  INTEGER NOT NULL CHECK (tail_debits_nusd >= 0),
    cum_debits_nusd   INTEGER NOT NULL CHECK (cum_debits_nusd >= 0),
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- One lot per credit with an expiry; expiry:<id> is its expiry posting.
CREATE TABLE mw_credit_lots (
    id              TEXT PRIMARY KEY,
    wallet_id       TEXT NOT NULL REFERENCES mw_lot_wallets (wallet_id),
    amount_nusd     INTEGER NOT NULL CHECK (amount_nusd > 0),
    remaining_nusd  INTEGER NOT NULL CHECK (remaining_nusd >= 0 AND remaining_nusd <= amount_nusd),
    expires_at      TEXT NOT NULL,
    opened_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expired_nusd    INTEGER CHECK (expired_nusd IS NULL OR expired_nusd >= 0),
    closed_at       TEXT,
    CHECK (closed_at IS NULL OR remaining_nusd = 0)
) STRICT;
-- The sweep finds due lots, the overview a wallet's open ones; closed lots leave both indexes.
CREATE INDEX mw_credit_lots_due ON mw_credit_lots (expires_at) WHERE closed_at IS NULL;
CREATE INDEX mw_credit_lots_wallet ON mw_credit_lots (wallet_id, expires_at) WHERE closed_at IS NULL;
