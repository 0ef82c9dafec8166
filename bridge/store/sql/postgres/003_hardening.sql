-- The PostgreSQL twin of sql/sqlite/003_hardening.sql.

-- Registration's uniqueness on a digest of the callback URL: a btree row holds at most
-- about 2.7 KB, and a 2048-character URL of 3- or 4-byte characters is 6-8 KB.
-- registered_job still compares the URL byte for byte.
ALTER TABLE jobs ADD COLUMN url_digest bytea;
UPDATE jobs SET url_digest = sha256(convert_to(callback_url, 'UTF8'));
ALTER TABLE jobs ALTER COLUMN url_digest SET NOT NULL;
DROP INDEX jobs_registration;
CREATE UNIQUE INDEX jobs_registration ON jobs (tenant, kind, token, url_digest)
    WHERE state <> 'canceled';

-- When the job's first poll was promised (record_poll keeps it for a late joiner).
ALTER TABLE jobs ADD COLUMN first_poll_at double precision;

-- Keys the replicas share, made once: "cursor" seals the listing cursors.
CREATE TABLE server_keys (
    name       text PRIMARY KEY,
    secret     text NOT NULL,
    created_at double precision NOT NULL
);

-- Paused time per kind, credited to deadlines (see the SQLite twin).
CREATE TABLE pause_clock (
    kind  text PRIMARY KEY,
    since double precision,
    until double precision
);
-- A row per kind from the start: writers lock it, so two replicas taking pauses at once
-- widen one span rather than overwrite each other's.
INSERT INTO pause_clock (kind) VALUES ('video'), ('document');
