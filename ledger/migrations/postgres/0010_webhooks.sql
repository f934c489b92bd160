-- Webhooks and balance alerts (issue 10).
-- mw_events is the outbox: every event a wallet's owners may hear of, written in the
-- transaction that caused it. Each endpoint reads it in order from its own cursor.
CREATE TABLE mw_events (
    seq         bigserial PRIMARY KEY,
    id          text NOT NULL UNIQUE,  -- also the idempotency key of events fired once (cap.reached:<cap id>)
    wallet_id   text NOT NULL,
    type        text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX mw_events_wallet ON mw_events (wallet_id, seq);

CREATE TABLE mw_webhook_endpoints (
    id              text PRIMARY KEY,
    wallet_id       text NOT NULL REFERENCES mw_accounts (id),
    url             text NOT NULL,
    events          jsonb NOT NULL,  -- the event types it subscribes to
    secret_sealed   text NOT NULL,   -- the signing secret, sealed with the master key (never in clear)
    cursor_seq      bigint NOT NULL DEFAULT 0,  -- the last event delivered (or given up on)
    attempts        integer NOT NULL DEFAULT 0,  -- failed attempts at the next event
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,  -- a gateway process is delivering to it until then
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz
);
CREATE INDEX mw_webhook_endpoints_due ON mw_webhook_endpoints (next_attempt_at) WHERE disabled_at IS NULL;

CREATE TABLE mw_webhook_attempts (
    id          bigserial PRIMARY KEY,
    endpoint_id text NOT NULL REFERENCES mw_webhook_endpoints (id),
    event_id    text NOT NULL,
    attempt     integer NOT NULL,
    outcome     text NOT NULL,  -- delivered, failed (retried later), gave_up
    status_code integer,
    error       text,
    duration_ms double precision NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mw_webhook_attempts_endpoint ON mw_webhook_attempts (endpoint_id, id);

CREATE TABLE mw_balance_alerts (
    id             text PRIMARY KEY,
    wallet_id      text NOT NULL REFERENCES mw_accounts (id),
    event          text NOT NULL CHECK (event IN ('wallet.balance_low', 'wallet.empty')),
    threshold_nusd bigint NOT NULL CHECK (threshold_nusd >= 0),  -- fires when the balance falls below it
    share_percent  integer CHECK (share_percent >= 1 AND share_percent <= 100),  -- set: the threshold follows the last top-up
    armed          boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mw_balance_alerts_wallet ON mw_balance_alerts (wallet_id);

-- A balance falling below an armed alert's threshold fires it once, in the transaction
-- that moved the balance; money coming back above the threshold re-arms it.
CREATE FUNCTION mw_balance_alerts_fire() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance_nusd < OLD.balance_nusd THEN
        WITH fired AS (
            UPDATE mw_balance_alerts a SET armed = false
             WHERE a.wallet_id = NEW.id AND a.armed AND NEW.balance_nusd < a.threshold_nusd
            RETURNING a.id, a.event, a.threshold_nusd, a.share_percent)
        INSERT INTO mw_events (id, wallet_id, type, payload)
        SELECT 'evt_' || replace(gen_random_uuid()::text, '-', ''), NEW.id, f.event,
               jsonb_build_object('alert_id', f.id, 'balance_nusd', NEW.balance_nusd,
                                  'threshold_nusd', f.threshold_nusd, 'share_percent', f.share_percent)
          FROM fired f;
    ELSE
        UPDATE mw_balance_alerts a SET armed = true
         WHERE a.wallet_id = NEW.id AND NOT a.armed AND NEW.balance_nusd >= a.threshold_nusd;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER mw_balance_alerts_fire AFTER UPDATE OF balance_nusd ON mw_accounts
    FOR EACH ROW WHEN (NEW.balance_nusd IS DISTINCT FROM OLD.balance_nusd)
    EXECUTE FUNCTION mw_balance_alerts_fire();
