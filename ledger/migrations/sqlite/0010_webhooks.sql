-- Webhooks and balance alerts (issue 10), as on Postgres.
CREATE TABLE mw_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    wallet_id   TEXT NOT NULL,
    type        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX mw_events_wallet ON mw_events (wallet_id, seq);

CREATE TABLE mw_webhook_endpoints (
    id              TEXT PRIMARY KEY,
    wallet_id       TEXT NOT NULL REFERENCES mw_accounts (id),
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,
    secret_sealed   TEXT NOT NULL,
    cursor_seq      INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    lease_until     TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    disabled_at     TEXT
);

CREATE TABLE mw_webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id TEXT NOT NULL REFERENCES mw_webhook_endpoints (id),
    event_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms REAL NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX mw_webhook_attempts_endpoint ON mw_webhook_attempts (endpoint_id, id);

CREATE TABLE mw_balance_alerts (
    id             TEXT PRIMARY KEY,
    wallet_id      TEXT NOT NULL REFERENCES mw_accounts (id),
    event          TEXT NOT NULL CHECK (event IN ('wallet.balance_low', 'wallet.empty')),
    threshold_nusd INTEGER NOT NULL CHECK (threshold_nusd >= 0),
    share_percent  INTEGER CHECK (share_percent >= 1 AND share_percent <= 100),
    armed          INTEGER NOT NULL DEFAULT 1,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX mw_balance_alerts_wallet ON mw_balance_alerts (wallet_id);

CREATE TRIGGER mw_balance_alerts_fire AFTER UPDATE OF balance_nusd ON mw_accounts
WHEN NEW.balance_nusd < OLD.balance_nusd
BEGIN
    INSERT INTO mw_events (id, wallet_id, type, payload)
    SELECT 'evt_' || lower(hex(randomblob(16))), NEW.id, a.event,
           json_object('alert_id', a.id, 'balance_nusd', NEW.balance_nusd, 'threshold_nusd', a.threshold_nusd,
                       'share_percent', a.share_percent)
      FROM mw_balance_alerts a WHERE a.wallet_id = NEW.id AND a.armed AND NEW.balance_nusd < a.threshold_nusd;
    UPDATE mw_balance_alerts SET armed = 0 WHERE wallet_id = NEW.id AND armed AND NEW.balance_nusd < threshold_nusd;
END;

CREATE TRIGGER mw_balance_alerts_rearm AFTER UPDATE OF balance_nusd ON mw_accounts
WHEN NEW.balance_nusd > OLD.balance_nusd
BEGIN
    UPDATE mw_balance_alerts SET armed = 1 WHERE wallet_id = NEW.id AND NOT armed AND NEW.balance_nusd >= threshold_nusd;
END;
