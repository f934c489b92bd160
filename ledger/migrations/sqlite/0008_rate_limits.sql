-- A key's traffic rules (issue 10): requests and tokens per minute, parallel requests, an IP allow-list.
ALTER TABLE mw_keys ADD COLUMN rpm_max INTEGER CHECK (rpm_max IS NULL OR rpm_max > 0);
ALTER TABLE mw_keys ADD COLUMN tpm_max INTEGER CHECK (tpm_max IS NULL OR tpm_max > 0);
ALTER TABLE mw_keys ADD COLUMN parallel_max INTEGER CHECK (parallel_max IS NULL OR parallel_max > 0);
-- A JSON array of CIDRs in normal form; NULL: any address.
ALTER TABLE mw_keys ADD COLUMN ip_allow TEXT;
