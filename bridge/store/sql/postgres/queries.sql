-- PostgreSQL's own statements, under the same names as sql/sqlite/queries.sql.
--
-- Every verb runs in one READ COMMITTED transaction. Writers that touch a watch and its
-- jobs lock the watch row first, then the jobs (bridge/store/verbs.py): the lock_*
-- statements and FOR UPDATE reads below are how.
--
-- The database's clock, in the application's unit, is
--     extract(epoch FROM statement_timestamp())::float8
-- Leases are set and compared on it, so replicas whose clocks disagree still agree on
-- who holds what; due-ness compares with the :now the caller passes (the application
-- clock that computed the due times). statement_timestamp() rather than
-- clock_timestamp(): it is stable, one instant for the whole statement, so a claim's
-- filter and the lease it sets read the same clock once (and the planner may treat it as
-- a constant); a claim is one statement, so it is the moment the claim ran.
--
-- A list parameter is an array (= ANY, <> ALL).

-- -- locks: watch first, then jobs ---------------------------------------------------------

-- name: watch_by_token
-- The (project, kind, token) watch, locked: serializes every registration of it.
SELECT id, owner, next_poll_at FROM watches
 WHERE project = :project AND kind = :kind AND token = :token FOR UPDATE;

-- name: lock_watches
SELECT 1 FROM watches WHERE id = ANY(:watch_ids::bigint[]) ORDER BY id FOR UPDATE;

-- name: lock_job
SELECT 1 FROM jobs WHERE id = :job_id AND tenant = :tenant FOR UPDATE;

-- name: watch_for_poll
SELECT * FROM watches WHERE id = :watch_id FOR UPDATE;

-- name: pause_clocks
-- Locked first by every verb that reads them (set_pause, expire_due), before any watch.
SELECT project, kind, since, until FROM pause_clock ORDER BY project, kind FOR UPDATE;

-- name: outcome_jobs
-- The jobs a poll decides: those registered before its request went out. Locked and
-- re-checked: a job canceled meanwhile keeps its cancellation.
SELECT id, tenant, project, kind, token, callback_url, metadata, polls_base, attempts
  FROM jobs
 WHERE watch_id = :watch_id AND state = 'tracking' AND created_at <= :started_at
 ORDER BY seq FOR UPDATE;

-- name: expiring_jobs
-- Re-read under the watch locks: another replica may have expired them first.
SELECT j.id, j.project, j.kind, j.token, j.metadata, j.polls_base,
       w.status, w.error, w.result, w.polls, w.last_polled_at
  FROM jobs j JOIN watches w ON w.id = j.watch_id
 WHERE j.state = 'tracking' AND j.deadline_at <= :now AND j.watch_id = ANY(:watch_ids::bigint[])
 ORDER BY j.seq FOR UPDATE OF j;

-- name: job_for_attempt
SELECT state, attempts, next_attempt_at, delivered_at, ended_at FROM jobs
 WHERE id = :job_id FOR UPDATE;

-- -- writes on lists -----------------------------------------------------------------------

-- name: expiring_watches
-- The (project, kind) pairs whose polling is paused ("project:kind") do not expire
-- (their deadlines move when it ends).
SELECT DISTINCT watch_id FROM jobs
 WHERE state = 'tracking' AND deadline_at <= :now
   AND project || ':' || kind <> ALL(:skip_pairs::text[])
 ORDER BY watch_id;

-- name: idle_watches
-- A watch nobody tracks any more stops being polled, and its lease goes.
UPDATE watches SET next_poll_at = NULL, lease_owner = NULL, lease_until = NULL
 WHERE id = ANY(:watch_ids::bigint[])
   AND NOT EXISTS (SELECT 1 FROM jobs t WHERE t.watch_id = watches.id AND t.state = 'tracking');

-- name: delete_jobs
-- Attempts go with their job (ON DELETE CASCADE).
DELETE FROM jobs WHERE id = ANY(:job_ids::text[]) AND ended_at < :before RETURNING id;

-- name: strip_watches
-- A watch no job refers to any more stays, idle, as the record that its tenant owns the
-- (kind, token) for good (SPEC "Tenants": ownership outlives retention); what it saw goes.
-- A registration re-arms it afresh (rearm_watch).
UPDATE watches SET status = NULL, error = NULL, result = NULL
 WHERE id = ANY(:watch_ids::bigint[]) AND next_poll_at IS NULL
   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.watch_id = watches.id);

-- name: redeliver_jobs
-- POST /v1/redeliveries: a new round for up to :limit of a tenant's jobs in :state, the
-- earliest-ended first, each exactly as redeliver_job starts one. One statement on the
-- (tenant, state, ended_at) index. The rows are locked as they are chosen (in that order;
-- a deadlock with a concurrent purge is retried by the driver), and a row that changed
-- meanwhile is re-checked on its new version: a job purged or already redelivered by
-- another request is not counted twice.
WITH chosen AS (
    SELECT seq FROM jobs
     WHERE tenant = :tenant AND state = :state AND ended_at IS NOT NULL
       AND (CAST(:kind AS text) IS NULL OR kind = :kind)
       AND (CAST(:project AS text) IS NULL OR project = :project)
       AND (CAST(:since AS double precision) IS NULL OR ended_at >= :since)
       AND (CAST(:until AS double precision) IS NULL OR ended_at < :until)
     ORDER BY ended_at, seq
     LIMIT :limit
       FOR UPDATE
)
UPDATE jobs
   SET state = 'delivering', next_attempt_at = :now, delivered_at = NULL, round_attempts = 0,
       ended_at = NULL, updated_at = :now, round_started_at = :now
 WHERE seq = ANY (ARRAY(SELECT seq FROM chosen)) AND state = :state;

-- -- claims and leases: the database's clock -----------------------------------------------

-- name: claim_watches
-- One statement: concurrent claimers never wait for each other nor take the same row.
-- "= ANY (ARRAY(...))" rather than a join: a generic plan (asyncpg prepares statements)
-- cannot tell that LIMIT is small and would hash-join against a scan of the table.
--
-- Tenants take turns (SPEC "Polling"): each owner's most overdue watch first, then each
-- one's second, and so on, so a tenant with a hundred thousand due watches cannot starve
-- one with ten. The owners with live watches are walked on the (owner, next_poll_at)
-- index (a loose index scan: one probe per owner), and each contributes at most :limit of
-- its earliest: the cost grows with tenants and the claim, not with the backlog. Each
-- owner's candidates are locked as they are read (SKIP LOCKED: a concurrent claimer's
-- rows are passed over, not waited for, and one leased since this statement's snapshot
-- is re-checked on its new version); those that lose their turn are unlocked when the
-- statement ends.
WITH RECURSIVE owners AS (
    (SELECT owner FROM watches WHERE next_poll_at IS NOT NULL ORDER BY owner LIMIT 1)
    UNION ALL
    SELECT (SELECT w.owner FROM watches w
             WHERE w.next_poll_at IS NOT NULL AND w.owner > o.owner
             ORDER BY w.owner LIMIT 1)
      FROM owners o WHERE o.owner IS NOT NULL
), turns AS (
    SELECT c.id, c.next_poll_at,
           row_number() OVER (PARTITION BY o.owner ORDER BY c.next_poll_at, c.id) AS turn
      FROM owners o CROSS JOIN LATERAL (
           SELECT id, next_poll_at FROM watches
            WHERE owner = o.owner AND next_poll_at <= :now
              AND (lease_until IS NULL
                   OR lease_until < extract(epoch FROM statement_timestamp())::float8)
              AND project <> ALL(:skip_projects::text[])
              AND project || ':' || kind <> ALL(:skip_pairs::text[])
            ORDER BY next_poll_at
            LIMIT :limit
              FOR UPDATE SKIP LOCKED) c
     WHERE o.owner IS NOT NULL
), due AS (
    SELECT id FROM turns ORDER BY turn, next_poll_at, id LIMIT :limit
), claimed AS (
    UPDATE watches w
       SET lease_owner = :owner,
           lease_until = extract(epoch FROM statement_timestamp())::float8 + :lease::float8
     WHERE w.id = ANY (ARRAY(SELECT id FROM due))
    RETURNING w.id, w.kind, w.token, w.next_poll_at, w.status, w."interval", w.not_found,
              w.failures, coalesce(w.armed_at, w.created_at), w.last_polled_at, w.project
)
SELECT * FROM claimed ORDER BY next_poll_at, id;

-- name: claim_deliveries
-- As claim_watches, for callbacks: due ones, earliest first, around the ones this process
-- may not start now (see bridge/fairness.py): a full tenant's, a full host's, and those
-- waiting on an open circuit unless their round has lasted the schedule's length (they
-- are then ended). Of the earliest :scan candidates, no host or tenant gets more than the
-- room it has left (:host_cap or :tenant_cap when nothing of it is in flight).
WITH due AS (
    SELECT seq, callback_host, tenant, next_attempt_at FROM jobs
     WHERE state = 'delivering' AND next_attempt_at <= :now
       AND (lease_until IS NULL OR lease_until < extract(epoch FROM statement_timestamp())::float8)
       AND tenant <> ALL(:skip_tenants::text[])
       AND (callback_host IS NULL
            OR (callback_host <> ALL(:skip_hosts::text[])
                AND (callback_host <> ALL(:held_hosts::text[])
                     OR coalesce(round_started_at, outcome_at) + :round_length::float8 <= :now)))
     ORDER BY next_attempt_at
     LIMIT :scan
       FOR UPDATE SKIP LOCKED
), turns AS (
    SELECT seq, callback_host, tenant, next_attempt_at,
           row_number() OVER (PARTITION BY callback_host ORDER BY next_attempt_at, seq)
               AS host_turn,
           row_number() OVER (PARTITION BY tenant ORDER BY next_attempt_at, seq) AS tenant_turn
      FROM due
), chosen AS (
    SELECT c.seq FROM turns c
     WHERE c.host_turn <= coalesce((SELECT r.left_ FROM unnest(:room_hosts::text[],
                                                               :host_left::int[]) AS r(host, left_)
                                     WHERE r.host = c.callback_host), :host_cap::int)
       AND c.tenant_turn <= coalesce((SELECT r.left_ FROM unnest(:room_tenants::text[],
                                                                 :tenant_left::int[]) AS r(tenant, left_)
                                       WHERE r.tenant = c.tenant), :tenant_cap::int)
     ORDER BY c.next_attempt_at
     LIMIT :limit
), claimed AS (
    UPDATE jobs j
       SET lease_owner = :owner,
           lease_until = extract(epoch FROM statement_timestamp())::float8 + :lease::float8
     WHERE j.seq = ANY (ARRAY(SELECT seq FROM chosen))
    RETURNING j.seq, j.id, j.tenant, j.kind, j.token, j.callback_url, j.body, j.attempts,
              j.round_attempts, j.outcome_at, j.next_attempt_at,
              coalesce(j.round_started_at, j.outcome_at) AS round_started_at
)
SELECT * FROM claimed ORDER BY next_attempt_at, seq;

-- name: release_deliveries
-- Claimed callbacks this process cannot start now, given back due as they were.
UPDATE jobs SET lease_owner = NULL, lease_until = NULL
 WHERE id = ANY(:job_ids::text[]) AND lease_owner = :owner AND state = 'delivering';

-- name: hand_outcome
-- A tracking job gets its outcome (a poll's, or expiry's); with :lease_owner its first
-- callback comes leased to the recorder, who starts it at once.
UPDATE jobs
   SET state = 'delivering', outcome = :outcome, up_status = :up_status,
       up_error = :up_error, up_result = :up_result, polls = :polls,
       last_polled_at = :last_polled_at, outcome_at = :at, body = :body,
       next_attempt_at = :at, round_attempts = 0, updated_at = :at, round_started_at = :at,
       lease_owner = :lease_owner,
       lease_until = extract(epoch FROM statement_timestamp())::float8 + :lease::float8
 WHERE id = :job_id;

-- name: backlog
-- The claims' conditions, counted: due by the caller's clock, unleased by the database's.
SELECT p.n, p.oldest, d.n, d.oldest
  FROM (SELECT count(*) AS n, min(next_poll_at) AS oldest FROM watches
         WHERE next_poll_at <= :now
           AND (lease_until IS NULL
                OR lease_until < extract(epoch FROM statement_timestamp())::float8)) AS p,
       (SELECT count(*) AS n, min(next_attempt_at) AS oldest FROM jobs
         WHERE state = 'delivering' AND next_attempt_at <= :now
           AND (lease_until IS NULL
                OR lease_until < extract(epoch FROM statement_timestamp())::float8)) AS d;

-- name: next_due
-- Work under a live lease is another worker's; a lease that ran out (its holder died)
-- makes the work due again, as the claims see it. Callbacks only with :callbacks (while
-- the delivery gate holds them, they wait for it).
SELECT least(
    (SELECT min(next_poll_at) FROM watches
      WHERE next_poll_at IS NOT NULL
        AND (lease_until IS NULL
             OR lease_until < extract(epoch FROM statement_timestamp())::float8)),
    (SELECT min(next_attempt_at) FROM jobs
      WHERE :callbacks::boolean AND state = 'delivering'
        AND (lease_until IS NULL
             OR lease_until < extract(epoch FROM statement_timestamp())::float8)),
    (SELECT min(deadline_at) FROM jobs WHERE state = 'tracking'));

-- -- the driver's own ----------------------------------------------------------------------

-- name: notify
-- Delivered at commit, to every replica listening.
SELECT pg_notify(:channel, :payload);

-- name: signing_lock
-- Serializes every writer of one tenant's signing keys (a first key, a rotation): each
-- statement after it, READ COMMITTED, sees what the previous holder committed, so two
-- rotations at once end with the second's key current and the first's beside it.
SELECT pg_advisory_xact_lock(hashtextextended('uploadcare-bridge:signing:' || :tenant, 0));

-- name: schema_lock
-- IF NOT EXISTS alone still races in the catalog when replicas start together.
SELECT pg_advisory_xact_lock(hashtextextended('uploadcare-bridge:schema:' || :schema, 0));

-- name: migrate_lock
SELECT pg_advisory_xact_lock(
    hashtextextended('uploadcare-bridge:migrate:' || coalesce(current_schema(), ''), 0));

-- name: schema_version_table
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY, applied_at double precision NOT NULL);

-- name: schema_version
SELECT coalesce(max(version), 0) FROM schema_version;

-- name: record_version
INSERT INTO schema_version (version, applied_at)
VALUES (:version, extract(epoch FROM statement_timestamp())::float8);
