-- Key limits (issue 10), as on Postgres: an inference key may expire, and may be kept to some models.
ALTER TABLE mw_keys ADD COLUMN expires_at TEXT;
-- A JSON array of model names; NULL: every model the gateway serves.
ALTER TABLE mw_keys ADD COLUMN allowed_models TEXT;
