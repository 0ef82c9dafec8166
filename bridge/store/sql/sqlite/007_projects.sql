-- Issue 14: several Uploadcare projects. The PostgreSQL twin is sql/postgres/007_projects.sql.
--
-- A token is a number in one project's token space: the polled unit becomes the
-- (project, kind, token) watch, and every row made before projects existed belongs to
-- the project 'default' (UPLOADCARE_PUBLIC_KEY / UPLOADCARE_SECRET_KEY).

-- watches: UNIQUE (kind, token) is part of the table in SQLite, so the table is rebuilt
-- the documented way (a new table, the rows copied, the old one dropped, the new one
-- renamed), with foreign keys off for the migration (the driver's _migrate_sync): jobs'
-- REFERENCES watches (id) then names the new table, which keeps every id.
CREATE TABLE watches_v7 (
    id              INTEGER PRIMARY KEY,
    project         TEXT    NOT NULL DEFAULT 'default',
    kind            TEXT    NOT NULL,
    token           INTEGER NOT NULL,
    owner           TEXT    NOT NULL,           -- the tenant that registered it first
    status          TEXT,                       -- Uploadcare's status as last seen
    error           TEXT,
    result          TEXT,                       -- JSON
    polls           INTEGER NOT NULL DEFAULT 0,
    not_found       INTEGER NOT NULL DEFAULT 0, -- consecutive 404s
    failures        INTEGER NOT NULL DEFAULT 0, -- consecutive transient failures, for backoff
    interval        REAL,                       -- the last poll interval chosen
    last_polled_at  REAL,
    last_change_at  REAL,
    next_poll_at    REAL,
    lease_owner     TEXT,
    lease_until     REAL,
    created_at      REAL    NOT NULL,
    armed_at        REAL,
    UNIQUE (project, kind, token)
);
INSERT INTO watches_v7 (id, project, kind, token, owner, status, error, result, polls, not_found,
                     failures, interval, last_polled_at, last_change_at, next_poll_at,
                     lease_owner, lease_until, created_at, armed_at)
SELECT id, 'default', kind, token, owner, status, error, result, polls, not_found, failures,
       interval, last_polled_at, last_change_at, next_poll_at, lease_owner, lease_until,
       created_at, armed_at
  FROM watches;
DROP TABLE watches;
ALTER TABLE watches_v7 RENAME TO watches;
CREATE INDEX watches_due ON watches (next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE INDEX watches_owner_due ON watches (owner, next_poll_at) WHERE next_poll_at IS NOT NULL;

-- jobs: the project of their watch, and registration's idempotency per project.
ALTER TABLE jobs ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
DROP INDEX jobs_registration;
CREATE UNIQUE INDEX jobs_registration ON jobs (tenant, project, kind, token, url_digest)
    WHERE state <> 'canceled';

-- Pauses are per project: a 429 in one project pauses only that project (on every
-- replica). Keys become "<project>:throttled", "<project>:rejected[:<kind>]".
ALTER TABLE pauses ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
UPDATE pauses SET key = 'default:' || key;

-- Paused time per (project, kind), credited to the deadlines of that project's jobs of
-- that kind. Rows for other projects are made when a pause is first taken (set_pause).
CREATE TABLE pause_clock_v7 (
    project TEXT NOT NULL,
    kind    TEXT NOT NULL,
    since   REAL,  -- NULL: no open span
    until   REAL,
    PRIMARY KEY (project, kind)
);
INSERT INTO pause_clock_v7 (project, kind, since, until)
SELECT 'default', kind, since, until FROM pause_clock;
DROP TABLE pause_clock;
ALTER TABLE pause_clock_v7 RENAME TO pause_clock
