-- Key limits (issue 10): an inference key may expire, and may be kept to some models.
ALTER TABLE mw_keys ADD COLUMN expires_at timestamptz;
-- A JSON array of model names; NULL: every model the gateway serves.
ALTER TABLE mw_keys ADD COLUMN allowed_models text;
