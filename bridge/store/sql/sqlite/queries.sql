-- SQLite's own statements, under the same names as sql/postgres/queries.sql.
--
-- Every writing verb runs in a BEGIN IMMEDIATE transaction (or a savepoint of a group
-- commit): the whole file is locked for it, so the lock_* statements need no locks of
-- their own and the reads that follow them are current. Leases are set and compared on
-- the application's clock (:now), the only clock one process has. A list parameter comes
-- in as JSON text, read with json_each().

-- -- locks: the transaction holds the file already ----------------------------------------

-- name: watch_by_token
SELECT id, owner, next_poll_at FROM watches
 WHERE project = :project AND kind = :kind AND token = :token;

-- name: lock_watches
SELECT 1 FROM watches WHERE id IN (SELECT value FROM json_each(:watch_ids));

-- name: lock_job
SELECT 1 FROM jobs WHERE id = :job_id AND tenant = :tenant;

-- name: watch_for_poll
SELECT * FROM watches WHERE id = :watch_id;

-- name: pause_clocks
SELECT project, kind, since, until FROM pause_clock ORDER BY project, kind;

-- name: outcome_jobs
-- The jobs a poll decides: those registered before its request went out.
SELECT id, tenant, project, kind, token, callback_url, metadata, polls_base, attempts
  FROM jobs
 WHERE watch_id = :watch_id AND state = 'tracking' AND created_at <= :started_at
 ORDER BY seq;

-- name: expiring_jobs
SELECT j.id, j.project, j.kind, j.token, j.metadata, j.polls_base,
       w.status, w.error, w.result, w.polls, w.last_polled_at
  FROM jobs j JOIN watches w ON w.id = j.watch_id
 WHERE j.state = 'tracking' AND j.deadline_at <= :now
   AND j.watch_id IN (SELECT value FROM json_each(:watch_ids))
 ORDER BY j.seq;

-- name: job_for_attempt
SELECT state, attempts, next_attempt_at, delivered_at, ended_at FROM jobs WHERE id = :job_id;

-- -- writes on lists -----------------------------------------------------------------------

-- name: expiring_watches
-- The (project, kind) pairs whose polling is paused ("project:kind") do not expire
-- (their deadlines move when it ends).
SELECT DISTINCT watch_id FROM jobs
 WHERE state = 'tracking' AND deadline_at <= :now
   AND project || ':' || kind NOT IN (SELECT value FROM json_each(:skip_pairs))
 ORDER BY watch_id;

-- name: idle_watches
-- A watch nobody tracks any more stops being polled, and its lease goes.
UPDATE watches SET next_poll_at = NULL, lease_owner = NULL, lease_until = NULL
 WHERE id IN (SELECT value FROM json_each(:watch_ids))
   AND NOT EXISTS (SELECT 1 FROM jobs t WHERE t.watch_id = watches.id AND t.state = 'tracking');

-- name: delete_jobs
DELETE FROM jobs
 WHERE id IN (SELECT value FROM json_each(:job_ids)) AND ended_at < :before
RETURNING id;

-- name: strip_watches
-- A watch no job refers to any more stays, idle, as the record that its tenant owns the
-- (kind, token) for good (SPEC "Tenants": ownership outlives retention); what it saw goes.
-- A registration re-arms it afresh (rearm_watch).
UPDATE watches SET status = NULL, error = NULL, result = NULL
 WHERE id IN (SELECT value FROM json_each(:watch_ids)) AND next_poll_at IS NULL
   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.watch_id = watches.id);

-- name: redeliver_jobs
-- POST /v1/redeliveries: a new round for up to :limit of a tenant's jobs in :state, the
-- earliest-ended first, each exactly as redeliver_job starts one. One statement on the
-- (tenant, state, ended_at) index; the transaction holds the file.
UPDATE jobs
   SET state = 'delivering', next_attempt_at = :now, delivered_at = NULL, round_attempts = 0,
       ended_at = NULL, updated_at = :now, round_started_at = :now
 WHERE seq IN (
       SELECT seq FROM jobs
        WHERE tenant = :tenant AND state = :state AND ended_at IS NOT NULL
          AND (:kind IS NULL OR kind = :kind)
          AND (:project IS NULL OR project = :project)
          AND (:since IS NULL OR ended_at >= :since)
          AND (:until IS NULL OR ended_at < :until)
        ORDER BY ended_at, seq
        LIMIT :limit);

-- -- claims and leases: the application's clock --------------------------------------------

-- name: claim_watches
-- One statement: the due watches, leased, tenants taking turns: each owner's most overdue
-- first, then each one's second, and so on (SPEC "Polling"), so a tenant with a hundred
-- thousand due watches cannot starve one with ten. The owners with live watches are
-- walked on the (owner, next_poll_at) index, one step per owner, and each contributes at
-- most :limit of its earliest: the cost grows with tenants and the claim, not the backlog.
-- RETURNING keeps no order: the program sorts what it gets.
WITH RECURSIVE owners(owner) AS (
       SELECT min(owner) FROM watches WHERE next_poll_at IS NOT NULL
       UNION ALL
       SELECT (SELECT min(w.owner) FROM watches w
                WHERE w.next_poll_at IS NOT NULL AND w.owner > owners.owner)
         FROM owners WHERE owners.owner IS NOT NULL),
     turns AS (
       SELECT w.id, w.next_poll_at,
              row_number() OVER (PARTITION BY w.owner ORDER BY w.next_poll_at, w.id) AS turn
         FROM owners JOIN watches w ON w.id IN (
              SELECT x.id FROM watches x
               WHERE x.owner = owners.owner AND x.next_poll_at <= :now
                 AND (x.lease_until IS NULL OR x.lease_until < :now)
                 AND x.project NOT IN (SELECT value FROM json_each(:skip_projects))
                 AND x.project || ':' || x.kind NOT IN (SELECT value FROM json_each(:skip_pairs))
               ORDER BY x.next_poll_at
               LIMIT :limit))
UPDATE watches SET lease_owner = :owner, lease_until = :now + :lease
 WHERE id IN (SELECT id FROM turns ORDER BY turn, next_poll_at, id LIMIT :limit)
RETURNING id, kind, token, next_poll_at, status, "interval", not_found, failures,
          coalesce(armed_at, created_at), last_polled_at, project;

-- name: claim_deliveries
-- Due callbacks, earliest first, around the ones this process may not start now (see
-- bridge/fairness.py): a full tenant's, a full host's, and those waiting on an open
-- circuit unless their round has lasted the schedule's length (they are then ended).
-- Of the earliest :scan candidates, no host or tenant gets more than the room it has left
-- (:host_cap or :tenant_cap when nothing of it is in flight): claiming more only to give
-- it back cost two writes a callback when one receiver took everything.
UPDATE jobs SET lease_owner = :owner, lease_until = :now + :lease
 WHERE seq IN (
       SELECT seq FROM (
              SELECT seq, callback_host, tenant, next_attempt_at,
                     row_number() OVER (PARTITION BY callback_host
                                        ORDER BY next_attempt_at, seq) AS host_turn,
                     row_number() OVER (PARTITION BY tenant
                                        ORDER BY next_attempt_at, seq) AS tenant_turn
                FROM (SELECT seq, callback_host, tenant, next_attempt_at FROM jobs
                       WHERE state = 'delivering' AND next_attempt_at <= :now
                         AND (lease_until IS NULL OR lease_until < :now)
                         AND tenant NOT IN (SELECT value FROM json_each(:skip_tenants))
                         AND (callback_host IS NULL
                              OR (callback_host NOT IN (SELECT value FROM json_each(:skip_hosts))
                                  AND (callback_host NOT IN
                                           (SELECT value FROM json_each(:held_hosts))
                                       OR coalesce(round_started_at, outcome_at)
                                          + :round_length <= :now)))
                       ORDER BY next_attempt_at
                       LIMIT :scan)) c
        WHERE c.host_turn <= coalesce((SELECT r.value FROM json_each(:room_hosts) h
                                         JOIN json_each(:host_left) r ON r.key = h.key
                                        WHERE h.value = c.callback_host), :host_cap)
          AND c.tenant_turn <= coalesce((SELECT r.value FROM json_each(:room_tenants) t
                                           JOIN json_each(:tenant_left) r ON r.key = t.key
                                          WHERE t.value = c.tenant), :tenant_cap)
        ORDER BY c.next_attempt_at
        LIMIT :limit)
RETURNING seq, id, tenant, kind, token, callback_url, body, attempts, round_attempts,
          outcome_at, next_attempt_at, coalesce(round_started_at, outcome_at);

-- name: release_deliveries
-- Claimed callbacks this process cannot start now, given back due as they were.
UPDATE jobs SET lease_owner = NULL, lease_until = NULL
 WHERE id IN (SELECT value FROM json_each(:job_ids)) AND lease_owner = :owner
   AND state = 'delivering';

-- name: hand_outcome
-- A tracking job gets its outcome (a poll's, or expiry's); with :lease_owner its first
-- callback comes leased to the recorder, who starts it at once.
UPDATE jobs
   SET state = 'delivering', outcome = :outcome, up_status = :up_status,
       up_error = :up_error, up_result = :up_result, polls = :polls,
       last_polled_at = :last_polled_at, outcome_at = :at, body = :body,
       next_attempt_at = :at, round_attempts = 0, updated_at = :at, round_started_at = :at,
       lease_owner = :lease_owner, lease_until = :at + :lease
 WHERE id = :job_id;

-- name: backlog
-- Work due and not started: the claims' conditions, counted.
SELECT p.n, p.oldest, d.n, d.oldest
  FROM (SELECT count(*) AS n, min(next_poll_at) AS oldest FROM watches
         WHERE next_poll_at <= :now AND (lease_until IS NULL OR lease_until < :now)) AS p,
       (SELECT count(*) AS n, min(next_attempt_at) AS oldest FROM jobs
         WHERE state = 'delivering' AND next_attempt_at <= :now
           AND (lease_until IS NULL OR lease_until < :now)) AS d;

-- name: next_due
-- Leased work aside: this process holds every lease in the file and gives each back when
-- its work is recorded (or at the next start), so nothing leased falls due meanwhile.
-- Callbacks only with :callbacks (while the delivery gate holds them, they wait for it).
SELECT min(t) FROM (
       SELECT min(next_poll_at) AS t FROM watches
        WHERE next_poll_at IS NOT NULL AND lease_until IS NULL
       UNION ALL
       SELECT min(next_attempt_at) FROM jobs
        WHERE :callbacks AND state = 'delivering' AND lease_until IS NULL
       UNION ALL
       SELECT min(deadline_at) FROM jobs WHERE state = 'tracking') AS due;

-- name: signing_lock
-- One writer at a time already: nothing to take (the PostgreSQL twin takes a lock).
SELECT :tenant;

-- -- the driver's own ----------------------------------------------------------------------

-- name: forget_watch_leases
-- At an exclusive open: this process holds the file alone, so any lease in it belonged to
-- one that died.
UPDATE watches SET lease_owner = NULL, lease_until = NULL;

-- name: forget_job_leases
UPDATE jobs SET lease_owner = NULL, lease_until = NULL;
