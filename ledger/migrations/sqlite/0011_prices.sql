-- A versioned price catalogue (issue 11): each model's prices, each version in force from its
-- effective time. A request is priced by the version in force when it started; its usage row
-- says which (price_version). The config's [models] prices stay as the bootstrap ("config").
CREATE TABLE mw_prices (
    model                     TEXT NOT NULL,
    effective_at              TEXT NOT NULL,
    input_per_1m_nusd         INTEGER NOT NULL CHECK (input_per_1m_nusd >= 0),
    cached_input_per_1m_nusd  INTEGER NOT NULL CHECK (cached_input_per_1m_nusd >= 0),
    output_per_1m_nusd        INTEGER NOT NULL CHECK (output_per_1m_nusd >= 0),
    per_call_nusd             INTEGER NOT NULL CHECK (per_call_nusd >= 0),
    created_at                TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (model, effective_at)
);
ALTER TABLE mw_usage ADD COLUMN price_version TEXT;
