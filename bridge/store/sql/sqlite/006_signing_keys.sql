-- Signing keys (bridge/webhooks.py SecretBook): every generated key that signs a tenant's
-- callbacks, per scheme. "v1": secret is a whsec_ secret, public_key NULL. "v1a": secret
-- is the whsk_ Ed25519 private key (the raw seed), public_key its whpk_. expires_at NULL
-- is the current key of (tenant, scheme); a rotation gives the current one an expiry
-- (now + BRIDGE_SECRET_ROTATION_OVERLAP), deletes any older one, and inserts the new one,
-- all in one transaction: at most two in force, never none.
CREATE TABLE signing_keys (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT NOT NULL,
    scheme     TEXT NOT NULL CHECK (scheme IN ('v1', 'v1a')),
    secret     TEXT NOT NULL,
    public_key TEXT,
    created_at REAL NOT NULL,
    expires_at REAL
);
-- One current key per tenant and scheme: two replicas generating a tenant's first key at
-- once insert one (the other's insert does nothing and it reads the winner's).
CREATE UNIQUE INDEX signing_keys_current ON signing_keys (tenant, scheme) WHERE expires_at IS NULL;
CREATE INDEX signing_keys_tenant ON signing_keys (tenant, scheme, id);
-- The secrets generated before rotation existed become their tenants' current v1 keys.
INSERT INTO signing_keys (tenant, scheme, secret, created_at)
SELECT tenant, 'v1', secret, created_at FROM signing_secrets;
DROP TABLE signing_secrets;
