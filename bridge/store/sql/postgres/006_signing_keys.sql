-- The PostgreSQL twin of sql/sqlite/006_signing_keys.sql (the why of each part is there).
CREATE TABLE signing_keys (
    id         bigserial PRIMARY KEY,
    tenant     text NOT NULL,
    scheme     text NOT NULL CHECK (scheme IN ('v1', 'v1a')),
    secret     text NOT NULL,
    public_key text,
    created_at double precision NOT NULL,
    expires_at double precision
);
CREATE UNIQUE INDEX signing_keys_current ON signing_keys (tenant, scheme) WHERE expires_at IS NULL;
CREATE INDEX signing_keys_tenant ON signing_keys (tenant, scheme, id);
INSERT INTO signing_keys (tenant, scheme, secret, created_at)
SELECT tenant, 'v1', secret, created_at FROM signing_secrets;
DROP TABLE signing_secrets;
