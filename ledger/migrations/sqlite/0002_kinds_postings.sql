-- Kinds become data, transfers become legs of postings, usage names its payees.
-- SQLite cannot drop a CHECK, so mw_accounts and mw_transfers are rebuilt: create
-- new, copy, drop, rename, recreate indexes and triggers. Balances are copied,
-- never recomputed: the triggers are recreated after the copy. The migration runs
-- with foreign keys off and checks them before commit (sqlite_book._migrate).

CREATE TABLE mw_account_kinds (
    kind             TEXT PRIMARY KEY,
    description      TEXT NOT NULL,
    may_go_negative  INTEGER NOT NULL CHECK (may_go_negative IN (0, 1)),
    is_wallet        INTEGER NOT NULL CHECK (is_wallet IN (0, 1)),
    UNIQUE (kind, may_go_negative)
) STRICT;
INSERT INTO mw_account_kinds (kind, description, may_go_negative, is_wallet) VALUES
    ('wallet', 'a customer''s prepaid money: never negative', 0, 1),
    ('revenue', 'money earned from usage', 0, 0),
    ('funding', 'money that entered from outside (deposits, operator credits)', 1, 0),
    ('shortfall', 'usage that could not be charged to a wallet', 1, 0),
    ('receivable', 'what a wallet owes after a reversal it could not pay (recv:<wallet>)', 1, 0);

CREATE TABLE mw_transfer_kinds (
    kind         TEXT PRIMARY KEY,
    description  TEXT NOT NULL
) STRICT;
INSERT INTO mw_transfer_kinds (kind, description) VALUES
    ('deposit', 'money paid in from outside (card, chain)'),
    ('adjustment', 'an operator''s manual credit or debit'),
    ('usage', 'a wallet pays for a settled request'),
    ('shortfall', 'the part of a request''s cost no wallet paid'),
    ('payment', 'a wallet pays others (creators, platform fees)'),
    ('reversal', 'money taken back (refund, chargeback, reorg, clawback); the rest is owed');

DROP TRIGGER mw_transfers_apply;
DROP TRIGGER mw_transfers_no_update;
DROP TRIGGER mw_transfers_no_delete;

CREATE TABLE mw_accounts_new (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    name            TEXT,
    balance_nusd    INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 0,
    allow_negative  INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT mw_accounts_no_overdraft CHECK (allow_negative OR balance_nusd >= 0),
    CONSTRAINT mw_accounts_kind_fkey FOREIGN KEY (kind, allow_negative)
        REFERENCES mw_account_kinds (kind, may_go_negative)
) STRICT;
INSERT INTO mw_accounts_new (id, kind, name, balance_nusd, version, allow_negative, created_at)
    SELECT id, kind, name, balance_nusd, version, allow_negative, created_at FROM mw_accounts;
DROP TABLE mw_accounts;
ALTER TABLE mw_accounts_new RENAME TO mw_accounts;

CREATE TABLE mw_transfers_new (
    id              TEXT PRIMARY KEY,
    posting_id      TEXT NOT NULL,
    debit_account   TEXT NOT NULL REFERENCES mw_accounts (id),
    credit_account  TEXT NOT NULL REFERENCES mw_accounts (id),
    amount_nusd     INTEGER NOT NULL CHECK (amount_nusd > 0),
    kind            TEXT NOT NULL REFERENCES mw_transfer_kinds (kind),
    request_id      TEXT,
    memo            TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK (debit_account <> credit_account)
) STRICT;
-- A settled request was one posting (its usage and shortfall legs); any other transfer its own.
INSERT INTO mw_transfers_new (id, posting_id, debit_account, credit_account, amount_nusd, kind, request_id, memo, created_at)
    SELECT id, CASE WHEN kind IN ('usage', 'shortfall') AND request_id IS NOT NULL THEN request_id ELSE id END,
           debit_account, credit_account, amount_nusd, kind, request_id, memo, created_at
      FROM mw_transfers ORDER BY rowid;
DROP TABLE mw_transfers;
ALTER TABLE mw_transfers_new RENAME TO mw_transfers;
CREATE INDEX mw_transfers_debit ON mw_transfers (debit_account, created_at);
CREATE INDEX mw_transfers_credit ON mw_transfers (credit_account, created_at);
CREATE INDEX mw_transfers_posting ON mw_transfers (posting_id);

-- Row by row on SQLite: one writer holds the whole file, so there is no hot row
-- lock to contend for, and each UPDATE is a page already in the transaction.
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

-- Who received each request's cost, in fill order, as JSON [{account_id, amount_nusd}].
ALTER TABLE mw_usage ADD COLUMN payees TEXT NOT NULL DEFAULT '[]';
UPDATE mw_usage SET payees = json_array(json_object('account_id', 'sys:revenue', 'amount_nusd', cost_nusd))
 WHERE cost_nusd > 0;
