-- The PostgreSQL twin of sql/sqlite/001_init.sql: same tables, columns and meaning.
-- Times are double precision seconds since the epoch, exactly as the application's clock
-- gives them; only leases are set and compared on the database's clock. lease_owner is
-- deliberately not indexed: a claim then changes no indexed column and can be a HOT update.

-- The polled unit: one row per (kind, token), shared by every job that watches it.
-- next_poll_at is NULL while no job is tracking it.
CREATE TABLE watches (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text    NOT NULL,
    token           bigint  NOT NULL,
    owner           text    NOT NULL,            -- the tenant that registered it first
    status          text,                        -- Uploadcare's status as last seen
    error           text,
    result          text,                        -- JSON
    polls           integer NOT NULL DEFAULT 0,
    not_found       integer NOT NULL DEFAULT 0,  -- consecutive 404s
    failures        integer NOT NULL DEFAULT 0,  -- consecutive transient failures, for backoff
    "interval"      double precision,            -- the last poll interval chosen
    last_polled_at  double precision,
    last_change_at  double precision,
    next_poll_at    double precision,
    lease_owner     text,
    lease_until     double precision,            -- the database's clock
    created_at      double precision NOT NULL,
    UNIQUE (kind, token)
) WITH (fillfactor = 80);  -- rewritten at every claim and poll: room for HOT updates
-- Matches the claim: next_poll_at <= $now implies IS NOT NULL, ordered by next_poll_at.
CREATE INDEX watches_due ON watches (next_poll_at) WHERE next_poll_at IS NOT NULL;

CREATE TABLE jobs (
    seq                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- listing order, cursor
    id                   text    NOT NULL UNIQUE,
    tenant               text    NOT NULL,
    watch_id             bigint  NOT NULL REFERENCES watches (id),
    kind                 text    NOT NULL,
    token                bigint  NOT NULL,
    callback_url         text    NOT NULL,
    metadata             text,
    state                text    NOT NULL,
    outcome              text,
    -- Upstream view, copied from the watch when the job stops tracking.
    up_status            text,
    up_error             text,
    up_result            text,
    polls_base           integer NOT NULL,  -- watches.polls when the job registered
    polls                integer NOT NULL DEFAULT 0,
    last_polled_at       double precision,
    outcome_at           double precision,
    body                 bytea,             -- the callback body, fixed when the outcome is recorded
    attempts             integer NOT NULL DEFAULT 0,
    round_attempts       integer NOT NULL DEFAULT 0,
    last_attempt_at      double precision,
    last_response_status integer,
    last_error           text,
    next_attempt_at      double precision,
    delivered_at         double precision,
    lease_owner          text,
    lease_until          double precision,  -- the database's clock
    created_at           double precision NOT NULL,
    updated_at           double precision NOT NULL,
    deadline_at          double precision NOT NULL,
    ended_at             double precision   -- when it became delivered, undeliverable or canceled
);
-- Idempotent registration, concurrent duplicates included.
CREATE UNIQUE INDEX jobs_registration ON jobs (tenant, kind, token, callback_url)
    WHERE state <> 'canceled';
CREATE INDEX jobs_tenant_seq ON jobs (tenant, seq);
CREATE INDEX jobs_watch ON jobs (watch_id);
CREATE INDEX jobs_watch_tracking ON jobs (watch_id) WHERE state = 'tracking';
CREATE INDEX jobs_deadline ON jobs (deadline_at) WHERE state = 'tracking';
-- Matches the delivery claim: state = 'delivering' AND next_attempt_at <= $now.
CREATE INDEX jobs_delivery_due ON jobs (next_attempt_at) WHERE state = 'delivering';
CREATE INDEX jobs_ended ON jobs (ended_at) WHERE ended_at IS NOT NULL;

CREATE TABLE attempts (
    job_id          text    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n               integer NOT NULL,
    at              double precision NOT NULL,
    duration_ms     integer NOT NULL,
    response_status integer,
    error           text,
    PRIMARY KEY (job_id, n)
);

-- Generated webhook signing secrets, one per tenant that has none configured.
CREATE TABLE signing_secrets (
    tenant     text PRIMARY KEY,
    secret     text NOT NULL,
    created_at double precision NOT NULL
);

-- Upstream pauses (429, rejected credentials), shared by every replica on the database.
CREATE TABLE pauses (
    key    text PRIMARY KEY,  -- "throttled", "rejected" or "rejected:<kind>"
    reason text NOT NULL,
    until  double precision NOT NULL,
    kind   text
);
