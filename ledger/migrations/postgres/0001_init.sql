-- Meterway ledger, Postgres. The database defends the book on its own:
-- a transfer is one positive amount from one account to another (balanced by
-- construction), account balances are maintained by a trigger (so they cannot
-- drift from the transfers), no account without allow_negative goes below
-- zero, and transfers can never be changed or deleted.

CREATE TABLE mw_accounts (
    id              text PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('wallet', 'revenue', 'funding', 'shortfall')),
    name            text,
    balance_nusd    bigint NOT NULL DEFAULT 0,
    version         bigint NOT NULL DEFAULT 0,
    allow_negative  boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mw_accounts_no_overdraft CHECK (allow_negative OR balance_nusd >= 0)
);

CREATE TABLE mw_transfers (
    id              text PRIMARY KEY,
    debit_account   text NOT NULL REFERENCES mw_accounts (id),
    credit_account  text NOT NULL REFERENCES mw_accounts (id),
    amount_nusd     bigint NOT NULL CHECK (amount_nusd > 0),
    kind            text NOT NULL CHECK (kind IN ('deposit', 'adjustment', 'usage', 'shortfall')),
    request_id      text,
    memo            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (debit_account <> credit_account)
);
CREATE INDEX mw_transfers_debit ON mw_transfers (debit_account, created_at);
CREATE INDEX mw_transfers_credit ON mw_transfers (credit_account, created_at);

CREATE FUNCTION mw_apply_transfer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE mw_accounts SET balance_nusd = balance_nusd - NEW.amount_nusd, version = version + 1
     WHERE id = NEW.debit_account;
    UPDATE mw_accounts SET balance_nusd = balance_nusd + NEW.amount_nusd, version = version + 1
     WHERE id = NEW.credit_account;
    RETURN NEW;
END $$;
CREATE TRIGGER mw_transfers_apply AFTER INSERT ON mw_transfers
    FOR EACH ROW EXECUTE FUNCTION mw_apply_transfer();

CREATE FUNCTION mw_transfers_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'mw_transfers is append-only';
END $$;
CREATE TRIGGER mw_transfers_no_change BEFORE UPDATE OR DELETE ON mw_transfers
    FOR EACH ROW EXECUTE FUNCTION mw_transfers_immutable();

CREATE TABLE mw_usage (
    request_id                text PRIMARY KEY,
    key_id                    text NOT NULL,
    wallet_id                 text NOT NULL REFERENCES mw_accounts (id),
    bot                       text,
    model                     text NOT NULL,
    upstream                  text NOT NULL,
    endpoint                  text NOT NULL,
    status                    text NOT NULL,
    usage_source              text NOT NULL,
    prompt_tokens             bigint NOT NULL CHECK (prompt_tokens >= 0),
    cached_tokens             bigint NOT NULL CHECK (cached_tokens >= 0),
    completion_tokens         bigint NOT NULL CHECK (completion_tokens >= 0),
    input_per_1m_nusd         bigint NOT NULL,
    cached_input_per_1m_nusd  bigint NOT NULL,
    output_per_1m_nusd        bigint NOT NULL,
    per_call_nusd             bigint NOT NULL,
    cost_nusd                 bigint NOT NULL CHECK (cost_nusd >= 0),
    charged_nusd              bigint NOT NULL CHECK (charged_nusd >= 0),
    shortfall_nusd            bigint NOT NULL CHECK (shortfall_nusd >= 0),
    held_nusd                 bigint NOT NULL CHECK (held_nusd >= 0),
    latency_ms                double precision NOT NULL,
    upstream_latency_ms       double precision NOT NULL,
    created_at                timestamptz NOT NULL DEFAULT now(),
    CHECK (charged_nusd + shortfall_nusd = cost_nusd)
);
CREATE INDEX mw_usage_wallet ON mw_usage (wallet_id, created_at);
CREATE INDEX mw_usage_key ON mw_usage (key_id, created_at);

CREATE TABLE mw_keys (
    id          text PRIMARY KEY,
    secret_hash text NOT NULL UNIQUE,
    prefix      text NOT NULL,
    wallet_id   text NOT NULL REFERENCES mw_accounts (id),
    name        text,
    bot         text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

INSERT INTO mw_accounts (id, kind, name, allow_negative) VALUES
    ('sys:revenue', 'revenue', 'usage revenue', false),
    ('sys:funding', 'funding', 'money that entered from outside (deposits, operator credits)', true),
    ('sys:shortfall', 'shortfall', 'usage that could not be charged to a wallet (receivable)', true);

-- Settle a batch of requests in one round trip. Each item is the usage row as
-- JSON. Idempotent per request_id: a replay answers the first result, the same
-- id with a different cost or wallet answers 'conflict'. The revenue row is
-- locked first so that concurrent batches from several gateways queue instead
-- of deadlocking on wallet rows taken in different orders.
CREATE FUNCTION mw_settle_batch(items jsonb)
RETURNS TABLE (request_id text, outcome text, charged_nusd bigint, shortfall_nusd bigint,
               balance_nusd bigint, version bigint)
LANGUAGE plpgsql AS $$
DECLARE
    item      jsonb;
    rid       text;
    wid       text;
    cost      bigint;
    bal       bigint;
    charged   bigint;
    shortfall bigint;
    prior     mw_usage%ROWTYPE;
BEGIN
    PERFORM 1 FROM mw_accounts a WHERE a.id = 'sys:revenue' FOR UPDATE;
    FOR item IN SELECT value FROM jsonb_array_elements(items) LOOP
        rid := item ->> 'request_id';
        wid := item ->> 'wallet_id';
        cost := (item ->> 'cost_nusd')::bigint;
        SELECT * INTO prior FROM mw_usage u WHERE u.request_id = rid;
        IF FOUND THEN
            SELECT a.balance_nusd, a.version INTO bal, version FROM mw_accounts a WHERE a.id = prior.wallet_id;
            request_id := rid; balance_nusd := bal;
            IF prior.cost_nusd = cost AND prior.wallet_id = wid THEN
                outcome := 'replay'; charged_nusd := prior.charged_nusd; shortfall_nusd := prior.shortfall_nusd;
            ELSE
                outcome := 'conflict'; charged_nusd := 0; shortfall_nusd := 0;
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;
        SELECT a.balance_nusd INTO bal FROM mw_accounts a WHERE a.id = wid AND a.kind = 'wallet' FOR UPDATE;
        IF NOT FOUND THEN
            request_id := rid; outcome := 'unknown_wallet'; charged_nusd := 0; shortfall_nusd := 0;
            balance_nusd := 0; version := 0;
            RETURN NEXT;
            CONTINUE;
        END IF;
        charged := LEAST(cost, bal);
        shortfall := cost - charged;
        IF charged > 0 THEN
            INSERT INTO mw_transfers (id, debit_account, credit_account, amount_nusd, kind, request_id)
            VALUES (rid, wid, 'sys:revenue', charged, 'usage', rid);
        END IF;
        IF shortfall > 0 THEN
            INSERT INTO mw_transfers (id, debit_account, credit_account, amount_nusd, kind, request_id)
            VALUES (rid || ':shortfall', 'sys:shortfall', 'sys:revenue', shortfall, 'shortfall', rid);
        END IF;
        INSERT INTO mw_usage
        SELECT * FROM jsonb_populate_record(NULL::mw_usage,
            item || jsonb_build_object('charged_nusd', charged, 'shortfall_nusd', shortfall, 'created_at', now()));
        SELECT a.balance_nusd, a.version INTO bal, version FROM mw_accounts a WHERE a.id = wid;
        request_id := rid; outcome := 'settled'; charged_nusd := charged; shortfall_nusd := shortfall;
        balance_nusd := bal;
        RETURN NEXT;
    END LOOP;
END $$;
