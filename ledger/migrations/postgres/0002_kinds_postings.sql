-- Kinds become data, transfers become legs of postings, usage names its payees,
-- and balances are applied once per statement (the hot sys:revenue row is
-- updated once per settle batch, not once per transfer).

CREATE TABLE mw_account_kinds (
    kind             text PRIMARY KEY,
    description      text NOT NULL,
    may_go_negative  boolean NOT NULL,
    is_wallet        boolean NOT NULL,
    UNIQUE (kind, may_go_negative)
);
INSERT INTO mw_account_kinds (kind, description, may_go_negative, is_wallet) VALUES
    ('wallet', 'a customer''s prepaid money: never negative', false, true),
    ('revenue', 'money earned from usage', false, false),
    ('funding', 'money that entered from outside (deposits, operator credits)', true, false),
    ('shortfall', 'usage that could not be charged to a wallet', true, false),
    ('receivable', 'what a wallet owes after a reversal it could not pay (recv:<wallet>)', true, false);

CREATE TABLE mw_transfer_kinds (
    kind         text PRIMARY KEY,
    description  text NOT NULL
);
INSERT INTO mw_transfer_kinds (kind, description) VALUES
    ('deposit', 'money paid in from outside (card, chain)'),
    ('adjustment', 'an operator''s manual credit or debit'),
    ('usage', 'a wallet pays for a settled request'),
    ('shortfall', 'the part of a request''s cost no wallet paid'),
    ('payment', 'a wallet pays others (creators, platform fees)'),
    ('reversal', 'money taken back (refund, chargeback, reorg, clawback); the rest is owed');

ALTER TABLE mw_accounts DROP CONSTRAINT mw_accounts_kind_check;
ALTER TABLE mw_accounts ADD CONSTRAINT mw_accounts_kind_fkey FOREIGN KEY (kind, allow_negative)
    REFERENCES mw_account_kinds (kind, may_go_negative);
ALTER TABLE mw_transfers DROP CONSTRAINT mw_transfers_kind_check;
ALTER TABLE mw_transfers ADD CONSTRAINT mw_transfers_kind_fkey FOREIGN KEY (kind)
    REFERENCES mw_transfer_kinds (kind);

-- A settled request was one posting (its usage and shortfall legs); any other transfer its own.
DROP TRIGGER mw_transfers_apply ON mw_transfers;
DROP FUNCTION mw_apply_transfer();
ALTER TABLE mw_transfers DISABLE TRIGGER mw_transfers_no_change;
ALTER TABLE mw_transfers ADD COLUMN posting_id text;
UPDATE mw_transfers SET posting_id =
    CASE WHEN kind IN ('usage', 'shortfall') AND request_id IS NOT NULL THEN request_id ELSE id END;
ALTER TABLE mw_transfers ALTER COLUMN posting_id SET NOT NULL;
ALTER TABLE mw_transfers ENABLE TRIGGER mw_transfers_no_change;
CREATE INDEX mw_transfers_posting ON mw_transfers (posting_id);

-- One UPDATE per account per INSERT statement. version counts the legs, as the
-- row trigger did; the no-overdraft CHECK sees each account's net change at the
-- end of the statement, before any commit. Every writer in the book (postings,
-- reversals, mw_settle_batch) has already locked its accounts in id order, the
-- ledger's one lock order, so gateways cannot deadlock on these rows.
CREATE FUNCTION mw_apply_transfers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE mw_accounts a SET balance_nusd = a.balance_nusd + d.delta, version = a.version + d.legs
      FROM (SELECT x.account, SUM(x.delta)::bigint AS delta, COUNT(*) AS legs FROM (
                SELECT t.debit_account AS account, -t.amount_nusd AS delta FROM new_transfers t
                UNION ALL SELECT t.credit_account, t.amount_nusd FROM new_transfers t) x
            GROUP BY x.account) d
     WHERE a.id = d.account;
    RETURN NULL;
END $$;
CREATE TRIGGER mw_transfers_apply AFTER INSERT ON mw_transfers
    REFERENCING NEW TABLE AS new_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION mw_apply_transfers();

-- Who received each request's cost, in fill order, as [{account_id, amount_nusd}].
ALTER TABLE mw_usage ADD COLUMN payees jsonb NOT NULL DEFAULT '[]';
UPDATE mw_usage SET payees = jsonb_build_array(jsonb_build_object('account_id', 'sys:revenue', 'amount_nusd', cost_nusd))
 WHERE cost_nusd > 0;

-- Settle a batch in one round trip, by the rule of ledger/model.py (settle_legs):
-- each item's payees are filled in order from the wallet's money, then from
-- sys:shortfall. Idempotent per request_id (replay / conflict). Every account
-- the batch names is locked first, in id order, with sys:shortfall always among
-- them so concurrent batches queue instead of racing on the same request id;
-- their balances are read once, then kept in `acct` as the batch moves money.
-- All transfers are written by ONE insert and all usage rows by another, so
-- the statement trigger updates each account (sys:revenue) once per batch.
CREATE OR REPLACE FUNCTION mw_settle_batch(items jsonb)
RETURNS TABLE (request_id text, outcome text, charged_nusd bigint, shortfall_nusd bigint,
               balance_nusd bigint, version bigint)
LANGUAGE plpgsql AS $$
DECLARE
    item jsonb; payee jsonb; payees jsonb; prior jsonb;
    acct jsonb;  -- account id -> [is_wallet, balance, version], as this batch leaves them
    seen jsonb := '{}';  -- request id -> what it settled in this batch
    rid text; wid text; tid text; account text;
    cost bigint; bal bigint; ver bigint; charged bigint; shortfall bigint; left_nusd bigint;
    pay bigint; from_wallet bigint; payee_sum bigint; all_known boolean; wallet_legs int; idx int; payee_count int;
    t_id text[] := '{}'; t_rid text[] := '{}'; t_debit text[] := '{}'; t_credit text[] := '{}';
    t_amount bigint[] := '{}'; t_kind text[] := '{}'; usage_rows jsonb[] := '{}';
BEGIN
    SELECT jsonb_object_agg(s.id, jsonb_build_array(s.is_wallet, s.balance_nusd, s.version)) INTO acct FROM (
        SELECT a.id, k.is_wallet, a.balance_nusd, a.version
          FROM mw_accounts a JOIN mw_account_kinds k ON k.kind = a.kind
         WHERE a.id IN (SELECT i ->> 'wallet_id' FROM jsonb_array_elements(items) i
                        UNION SELECT p ->> 'account_id' FROM jsonb_array_elements(items) i,
                                                             jsonb_array_elements(i -> 'payees') p
                        UNION SELECT 'sys:shortfall')
         ORDER BY a.id FOR UPDATE OF a) s;
    acct := COALESCE(acct, '{}');
    FOR item IN SELECT value FROM jsonb_array_elements(items) LOOP
        rid := item ->> 'request_id'; wid := item ->> 'wallet_id'; cost := (item ->> 'cost_nusd')::bigint;
        payees := COALESCE(item -> 'payees', '[]'); payee_count := jsonb_array_length(payees);
        request_id := rid; charged_nusd := 0; shortfall_nusd := 0;
        prior := seen -> rid;
        IF prior IS NULL THEN
            SELECT jsonb_build_object('wallet_id', u.wallet_id, 'cost_nusd', u.cost_nusd, 'payees', u.payees,
                                      'charged_nusd', u.charged_nusd, 'shortfall_nusd', u.shortfall_nusd)
              INTO prior FROM mw_usage u WHERE u.request_id = rid;
        END IF;
        IF prior IS NOT NULL THEN
            account := prior ->> 'wallet_id';
            IF acct ? account THEN
                balance_nusd := (acct -> account ->> 1)::bigint; version := (acct -> account ->> 2)::bigint;
            ELSE
                SELECT a.balance_nusd, a.version INTO balance_nusd, version FROM mw_accounts a WHERE a.id = account;
            END IF;
            IF (prior ->> 'cost_nusd')::bigint = cost AND account = wid AND prior -> 'payees' = payees THEN
                outcome := 'replay';
                charged_nusd := (prior ->> 'charged_nusd')::bigint; shortfall_nusd := (prior ->> 'shortfall_nusd')::bigint;
            ELSE
                outcome := 'conflict';
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF NOT COALESCE((acct -> wid ->> 0)::boolean, false) THEN
            outcome := 'unknown_wallet'; balance_nusd := 0; version := 0;
            RETURN NEXT;
            CONTINUE;
        END IF;
        bal := (acct -> wid ->> 1)::bigint; ver := (acct -> wid ->> 2)::bigint;
        payee_sum := 0; all_known := true;
        FOR idx IN 0 .. payee_count - 1 LOOP
            payee_sum := payee_sum + (payees -> idx ->> 'amount_nusd')::bigint;
            all_known := all_known AND acct ? (payees -> idx ->> 'account_id');
        END LOOP;
        IF payee_sum <> cost THEN  -- a precondition UsageRecord asserts: a caller's bug, not a value
            RAISE EXCEPTION 'mw_settle_batch: % payees sum to %, not the cost %', rid, payee_sum, cost;
        END IF;
        IF NOT all_known THEN
            outcome := 'unknown_payee'; balance_nusd := bal; version := ver;
            RETURN NEXT;
            CONTINUE;
        END IF;
        charged := LEAST(cost, bal); shortfall := cost - charged; left_nusd := charged; wallet_legs := 0;
        FOR idx IN 0 .. payee_count - 1 LOOP
            payee := payees -> idx; account := payee ->> 'account_id'; pay := (payee ->> 'amount_nusd')::bigint;
            tid := CASE WHEN idx = 0 THEN rid ELSE rid || ':' || idx END;
            from_wallet := LEAST(pay, left_nusd); left_nusd := left_nusd - from_wallet;
            IF from_wallet > 0 THEN
                t_id := t_id || tid; t_rid := t_rid || rid; t_debit := t_debit || wid; t_credit := t_credit || account;
                t_amount := t_amount || from_wallet; t_kind := t_kind || 'usage'::text;
                wallet_legs := wallet_legs + 1;
            END IF;
            IF pay > from_wallet THEN
                t_id := t_id || (tid || ':shortfall'); t_rid := t_rid || rid; t_debit := t_debit || 'sys:shortfall'::text;
                t_credit := t_credit || account; t_amount := t_amount || (pay - from_wallet); t_kind := t_kind || 'shortfall'::text;
            END IF;
            IF (acct -> account ->> 0)::boolean THEN  -- a wallet paid here may pay for a later item
                acct := jsonb_set(acct, ARRAY[account], jsonb_build_array(true,
                    (acct -> account ->> 1)::bigint + pay,
                    (acct -> account ->> 2)::bigint + (from_wallet > 0)::int + (pay > from_wallet)::int));
            END IF;
        END LOOP;
        -- Postconditions, as settle_legs() asserts them.
        IF left_nusd <> 0 OR charged + shortfall <> cost OR charged < 0 OR charged > bal THEN
            RAISE EXCEPTION 'mw_settle_batch: broken settle invariant for % (cost %, balance %, charged %)', rid, cost, bal, charged;
        END IF;
        acct := jsonb_set(acct, ARRAY[wid], jsonb_build_array(true, bal - charged, ver + wallet_legs));
        usage_rows := usage_rows || (item || jsonb_build_object(
            'charged_nusd', charged, 'shortfall_nusd', shortfall, 'created_at', now(), 'payees', payees));
        seen := seen || jsonb_build_object(rid, jsonb_build_object('wallet_id', wid, 'cost_nusd', cost, 'payees', payees,
                                                                    'charged_nusd', charged, 'shortfall_nusd', shortfall));
        outcome := 'settled'; charged_nusd := charged; shortfall_nusd := shortfall;
        balance_nusd := bal - charged; version := ver + wallet_legs;
        RETURN NEXT;
    END LOOP;
    IF cardinality(t_id) > 0 THEN
        INSERT INTO mw_transfers (id, posting_id, debit_account, credit_account, amount_nusd, kind, request_id)
        SELECT * FROM unnest(t_id, t_rid, t_debit, t_credit, t_amount, t_kind, t_rid);
    END IF;
    IF cardinality(usage_rows) > 0 THEN
        INSERT INTO mw_usage SELECT r.* FROM unnest(usage_rows) AS u (row_json),
                                            jsonb_populate_record(NULL::mw_usage, u.row_json) AS r;
    END IF;
END $$;
