-- The polled unit: one row per (kind, token), shared by every job that watches it.
-- next_poll_at is NULL while no job is tracking it.
CREATE TABLE watches (
    id              INTEGER PRIMARY KEY,
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
    UNIQUE (kind, token)
);
CREATE INDEX watches_due ON watches (next_poll_at) WHERE next_poll_at IS NOT NULL;

CREATE TABLE jobs (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT, -- listing order and cursor
    id                   TEXT    NOT NULL UNIQUE,
    tenant               TEXT    NOT NULL,
    watch_id             INTEGER NOT NULL REFERENCES watches (id),
    kind                 TEXT    NOT NULL,
    token                INTEGER NOT NULL,
    callback_url         TEXT    NOT NULL,
    metadata             TEXT,
    state                TEXT    NOT NULL,
    outcome              TEXT,
    -- Upstream view, copied from the watch when the job stops tracking.
    up_status            TEXT,
    up_error             TEXT,
    up_result            TEXT,
    polls_base           INTEGER NOT NULL,  -- watches.polls when the job registered
    polls                INTEGER NOT NULL DEFAULT 0,
    last_polled_at       REAL,
    outcome_at           REAL,
    body                 BLOB,              -- the callback body, fixed when the outcome is recorded
    attempts             INTEGER NOT NULL DEFAULT 0,
    round_attempts       INTEGER NOT NULL DEFAULT 0,
    last_attempt_at      REAL,
    last_response_status INTEGER,
    last_error           TEXT,
    next_attempt_at      REAL,
    delivered_at         REAL,
    lease_owner          TEXT,
    lease_until          REAL,
    created_at           REAL    NOT NULL,
    updated_at           REAL    NOT NULL,
    deadline_at          REAL    NOT NULL,
    ended_at             REAL               -- when it became delivered, undeliverable or canceled
);
-- Idempotent registration, concurrent duplicates included.
CREATE UNIQUE INDEX jobs_registration ON jobs (tenant, kind, token, callback_url)
    WHERE state <> 'canceled';
CREATE INDEX jobs_tenant_seq ON jobs (tenant, seq);
CREATE INDEX jobs_watch_tracking ON jobs (watch_id) WHERE state = 'tracking';
CREATE INDEX jobs_deadline ON jobs (deadline_at) WHERE state = 'tracking';
CREATE INDEX jobs_delivery_due ON jobs (next_attempt_at) WHERE state = 'delivering';
CREATE INDEX jobs_ended ON jobs (ended_at) WHERE ended_at IS NOT NULL;

CREATE TABLE attempts (
    job_id          TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n               INTEGER NOT NULL,
    at              REAL    NOT NULL,
    duration_ms     INTEGER NOT NULL,
    response_status INTEGER,
    error           TEXT,
    PRIMARY KEY (job_id, n)
);

-- Generated webhook signing secrets, one per tenant that has none configured.
CREATE TABLE signing_secrets (
    tenant     TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at REAL NOT NULL
);

-- Upstream pauses (429, rejected credentials), shared by every process on the database.
CREATE TABLE pauses (
    key    TEXT PRIMARY KEY,  -- "throttled", "rejected" or "rejected:<kind>"
    reason TEXT NOT NULL,
    until  REAL NOT NULL,
    kind   TEXT
);
