-- Issue 13 (hardening II). The PostgreSQL twin is sql/postgres/003_hardening.sql.

-- Registration's uniqueness on a digest of the callback URL, not the URL itself: a
-- 2048-character URL of 4-byte characters is 8 KiB, past what a PostgreSQL index row
-- holds. Both dialects index the same thing; registered_job still compares the URL
-- byte for byte. bridge_sha256 is the driver's SHA-256 of the text's UTF-8 bytes.
ALTER TABLE jobs ADD COLUMN url_digest BLOB;
UPDATE jobs SET url_digest = bridge_sha256(callback_url);
DROP INDEX jobs_registration;
CREATE UNIQUE INDEX jobs_registration ON jobs (tenant, kind, token, url_digest)
    WHERE state <> 'canceled';

-- When the job's first poll was promised: a job that joins a watch while a poll of it is
-- in flight keeps it (record_poll). NULL on older jobs: created_at stands in.
ALTER TABLE jobs ADD COLUMN first_poll_at REAL;

-- Keys the servers on one database share, made once (got or created atomically, like the
-- generated signing secrets): "cursor" seals the listing cursors.
CREATE TABLE server_keys (
    name       TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,  -- hex
    created_at REAL NOT NULL
);

-- Paused time per kind, credited to the deadlines of the jobs each pause held. A row
-- exists only once a pause was taken. An open span [since, until] is polling paused for
-- that kind (pauses that overlap or extend it widen it); once it has ended, the next
-- expiry settles it: every tracking job of the kind registered before its end gets its
-- deadline moved by the part of the span after it registered, and the span closes.
CREATE TABLE pause_clock (
    kind  TEXT PRIMARY KEY,
    since REAL,  -- NULL: no open span
    until REAL
);
-- A row per kind from the start: writers lock it (PostgreSQL), so two replicas taking
-- pauses at once widen one span rather than overwrite each other's.
INSERT INTO pause_clock (kind) VALUES ('video'), ('document');
