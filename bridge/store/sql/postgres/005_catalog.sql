-- Issue 16: bulk redelivery and debuggable attempts. The PostgreSQL twin of
-- sql/sqlite/005_catalog.sql.

-- POST /v1/redeliveries reads a tenant's ended jobs of one state in the order their last
-- round ended (earliest first, up to a limit) and counts the rest: this index serves both
-- without reading other tenants' or other states' rows.
CREATE INDEX jobs_tenant_ended ON jobs (tenant, state, ended_at) WHERE ended_at IS NOT NULL;

-- What an attempt kept of the receiver's answer: the first KiB of its body, as the bytes
-- came (the API decodes them as UTF-8 with replacement: a NUL, which PostgreSQL text
-- cannot hold, survives), and its Content-Type (bounded, control characters removed).
-- NULL for an empty body, no answer, or attempts made before these columns.
ALTER TABLE attempts ADD COLUMN response_excerpt bytea;
ALTER TABLE attempts ADD COLUMN response_content_type text;
