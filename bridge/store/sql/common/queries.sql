-- The statements SQLite and PostgreSQL both run as they are written, by name (see
-- bridge/store/queries.py). What the dialects do differently (locks, clocks, lists) is in
-- sql/sqlite/queries.sql and sql/postgres/queries.sql, under the same names in each.
--
-- Parameters are :name. A CAST on a parameter tells PostgreSQL its type where nothing
-- else does; SQLite takes it as it is.

-- name: ping
SELECT 1;

-- -- registration ------------------------------------------------------------------------

-- name: make_watch
-- The newcomer's watch, armed for its first poll; nothing if another registration made
-- it after our look (that one is then read and locked instead). Without RETURNING: the
-- job's insert finds the watch by (project, kind, token), and a RETURNING costs SQLite a
-- buffer.
INSERT INTO watches (project, kind, token, owner, next_poll_at, created_at, armed_at)
VALUES (:project, :kind, :token, :tenant, :first_poll_at, :now, :now)
ON CONFLICT (project, kind, token) DO NOTHING;

-- name: rearm_watch
-- The watch had ended: poll again for the newcomer, starting afresh.
UPDATE watches
   SET next_poll_at = :next_poll_at, status = NULL, error = NULL, result = NULL,
       not_found = 0, failures = 0, "interval" = NULL, last_change_at = NULL,
       last_polled_at = NULL, armed_at = :now
 WHERE id = :watch_id;

-- name: pull_watch
-- A live watch: its next poll is the newcomer's first one, no later than promised.
UPDATE watches SET next_poll_at = :next_poll_at WHERE id = :watch_id;

-- name: registered_job
-- The digest finds it on the registration index; the URL itself is compared byte for byte.
SELECT id FROM jobs
 WHERE tenant = :tenant AND project = :project AND kind = :kind AND token = :token
   AND url_digest = :url_digest AND callback_url = :callback_url AND state <> 'canceled';

-- name: insert_job
-- Nothing when a duplicate committed despite the watch lock: the registration then
-- decides against that one. (SQLite needs the WHERE to read ON CONFLICT as an upsert.)
INSERT INTO jobs (id, tenant, watch_id, project, kind, token, callback_url, url_digest,
                  metadata, state, polls_base, created_at, updated_at, deadline_at,
                  first_poll_at, callback_host)
SELECT :job_id, :tenant, id, project, kind, token, :callback_url, :url_digest, :metadata,
       'tracking', polls, :now, :now, :deadline_at, :first_poll_at, :callback_host
  FROM watches WHERE project = :project AND kind = :kind AND token = :token
ON CONFLICT (tenant, project, kind, token, url_digest) WHERE state <> 'canceled' DO NOTHING;

-- -- reading jobs --------------------------------------------------------------------------

-- name: job_by_id
-- A job with the watch columns a tracking job shows live (rules.job_from_row).
SELECT j.*, w.status AS w_status, w.error AS w_error, w.result AS w_result,
       w.polls AS w_polls, w.last_polled_at AS w_last_polled_at, w.next_poll_at AS w_next_poll_at
  FROM jobs j JOIN watches w ON w.id = j.watch_id
 WHERE j.id = :job_id AND j.tenant = :tenant;

-- name: list_jobs
-- Newest first, a page at a time. An absent filter matches all; the cursor is a range on
-- the (tenant, seq) index with or without one, so the index serves every page.
SELECT j.*, w.status AS w_status, w.error AS w_error, w.result AS w_result,
       w.polls AS w_polls, w.last_polled_at AS w_last_polled_at, w.next_poll_at AS w_next_poll_at
  FROM jobs j JOIN watches w ON w.id = j.watch_id
 WHERE j.tenant = :tenant
   AND (CAST(:state AS text) IS NULL OR j.state = :state)
   AND (CAST(:kind AS text) IS NULL OR j.kind = :kind)
   AND (CAST(:project AS text) IS NULL OR j.project = :project)
   AND (CAST(:token AS bigint) IS NULL OR j.token = :token)
   AND j.seq < coalesce(CAST(:before AS bigint), 9223372036854775807)
 ORDER BY j.seq DESC
 LIMIT :limit;

-- name: job_watch
SELECT watch_id FROM jobs WHERE id = :job_id AND tenant = :tenant;

-- name: job_state
SELECT state FROM jobs WHERE id = :job_id;

-- name: attempts
SELECT n, at, duration_ms, response_status, error, response_excerpt, response_content_type
  FROM attempts WHERE job_id = :job_id ORDER BY n;

-- name: count_by_state
SELECT state, count(*) FROM jobs GROUP BY state;

-- -- the API's changes ---------------------------------------------------------------------

-- name: cancel_job
-- Freezes what the job saw; its lease (if a callback was in flight) goes with it.
UPDATE jobs
   SET state = 'canceled', up_status = :up_status, up_error = :up_error,
       up_result = :up_result, polls = :polls, last_polled_at = :last_polled_at,
       next_attempt_at = NULL, ended_at = :now, updated_at = :now,
       lease_owner = NULL, lease_until = NULL
 WHERE id = :job_id;

-- name: redeliver_job
UPDATE jobs
   SET state = 'delivering', next_attempt_at = :now, delivered_at = NULL, round_attempts = 0,
       ended_at = NULL, updated_at = :now, round_started_at = :now
 WHERE id = :job_id;

-- name: redeliverable_count
-- The jobs POST /v1/redeliveries matches (after redeliver_jobs: those past its limit), on
-- the (tenant, state, ended_at) index. An absent filter matches all.
SELECT count(*) FROM jobs
 WHERE tenant = :tenant AND state = :state AND ended_at IS NOT NULL
   AND (CAST(:kind AS text) IS NULL OR kind = :kind)
   AND (CAST(:project AS text) IS NULL OR project = :project)
   AND (CAST(:since AS double precision) IS NULL OR ended_at >= :since)
   AND (CAST(:until AS double precision) IS NULL OR ended_at < :until);

-- name: signing_keys
-- The keys of a tenant's scheme that sign now: the current one (expires_at NULL, the
-- newest) first, then the one it replaced while its overlap lasts.
SELECT scheme, secret, public_key, expires_at FROM signing_keys
 WHERE tenant = :tenant AND scheme = :scheme AND (expires_at IS NULL OR expires_at > :now)
 ORDER BY id DESC;

-- name: offer_signing_key
-- A tenant's first key; nothing when it has a current one (signing_keys_current).
INSERT INTO signing_keys (tenant, scheme, secret, public_key, created_at)
VALUES (:tenant, :scheme, :secret, :public_key, :now)
ON CONFLICT (tenant, scheme) WHERE expires_at IS NULL DO NOTHING;

-- name: drop_retired_keys
-- A rotation forgets every key an earlier rotation retired: in force or not, only the
-- key it replaces keeps signing beside the new one.
DELETE FROM signing_keys WHERE tenant = :tenant AND scheme = :scheme AND expires_at IS NOT NULL;

-- name: retire_current_key
UPDATE signing_keys SET expires_at = :expires_at
 WHERE tenant = :tenant AND scheme = :scheme AND expires_at IS NULL;

-- name: insert_signing_key
-- No ON CONFLICT: under signing_lock the current key was just retired, so a conflict
-- would be a bug to raise, not a race to absorb.
INSERT INTO signing_keys (tenant, scheme, secret, public_key, created_at)
VALUES (:tenant, :scheme, :secret, :public_key, :now);

-- name: offer_server_key
INSERT INTO server_keys (name, secret, created_at) VALUES (:name, :secret, :now)
ON CONFLICT (name) DO NOTHING;

-- name: server_key
SELECT secret FROM server_keys WHERE name = :name;

-- name: ended_jobs
SELECT id, watch_id FROM jobs WHERE ended_at < :before ORDER BY ended_at LIMIT :batch;

-- -- polls ---------------------------------------------------------------------------------

-- name: learn_duration
INSERT INTO durations (kind, bucket, weight) VALUES (:kind, :bucket, :weight)
ON CONFLICT (kind, bucket) DO UPDATE SET weight = durations.weight + excluded.weight;

-- name: late_joiners
-- Jobs that registered after the poll's request went out (the watch is locked): the poll
-- is not theirs, so it must not count in their polls; what they were promised for their
-- first poll comes back (created_at stands in on jobs older than the column).
UPDATE jobs SET polls_base = polls_base + 1
 WHERE watch_id = :watch_id AND state = 'tracking' AND created_at > :started_at
RETURNING coalesce(first_poll_at, created_at);

-- name: record_watch
-- A watch no job tracks any more is idled here: no next poll. A lease is given back by
-- the owner that holds it, or when the work stops being live (nobody tracks). A replica recording late, after its lease ran out and another took the work
-- over, must not end the other's lease on work still live. Leases therefore only ever
-- sit on live work (a polled watch, a delivering job), which keeps release on the small
-- partial indexes and lets a claim, which changes no indexed column, be a HOT update.
UPDATE watches
   SET status = :status, error = :error, result = :result, polls = :polls,
       not_found = :not_found, failures = :failures, "interval" = :interval,
       last_polled_at = :last_polled_at, last_change_at = :last_change_at,
       next_poll_at = CASE WHEN EXISTS (SELECT 1 FROM jobs WHERE watch_id = :watch_id
                                                       AND state = 'tracking')
                           THEN CAST(:next_poll_at AS double precision) END,
       lease_owner = CASE WHEN lease_owner = :owner OR NOT EXISTS (
                              SELECT 1 FROM jobs WHERE watch_id = :watch_id AND state = 'tracking')
                          THEN NULL ELSE lease_owner END,
       lease_until = CASE WHEN lease_owner = :owner OR NOT EXISTS (
                              SELECT 1 FROM jobs WHERE watch_id = :watch_id AND state = 'tracking')
                          THEN NULL ELSE lease_until END
 WHERE id = :watch_id;


-- -- callbacks -----------------------------------------------------------------------------

-- name: insert_attempt
-- A retried record of the same attempt replaces it.
INSERT INTO attempts (job_id, n, at, duration_ms, response_status, error, response_excerpt,
                      response_content_type)
VALUES (:job_id, :n, :at, :duration_ms, :response_status, :error, :response_excerpt,
        :response_content_type)
ON CONFLICT (job_id, n) DO UPDATE
   SET at = excluded.at, duration_ms = excluded.duration_ms,
       response_status = excluded.response_status, error = excluded.error,
       response_excerpt = excluded.response_excerpt,
       response_content_type = excluded.response_content_type;

-- name: attempt_job
-- The lease goes back as in record_watch: to its owner, or when no attempt follows.
UPDATE jobs
   SET attempts = :attempts, round_attempts = round_attempts + 1, last_attempt_at = :at,
       last_response_status = :response_status, last_error = :error,
       updated_at = :finished_at, state = :state, next_attempt_at = :next_attempt_at,
       delivered_at = :delivered_at, ended_at = :ended_at,
       lease_owner = CASE WHEN lease_owner = :owner OR :ended THEN NULL ELSE lease_owner END,
       lease_until = CASE WHEN lease_owner = :owner OR :ended THEN NULL ELSE lease_until END
 WHERE id = :job_id;

-- name: end_round
-- A round that lasted as long as the retry schedule while its host's circuit kept it
-- waiting ends without an attempt. Only by the lease's holder, and only if still so.
UPDATE jobs
   SET state = 'undeliverable', next_attempt_at = NULL, ended_at = :now, updated_at = :now,
       lease_owner = NULL, lease_until = NULL
 WHERE id = :job_id AND state = 'delivering' AND lease_owner = :owner
   AND coalesce(round_started_at, outcome_at) + :round_length <= :now;

-- -- learned durations and pauses ----------------------------------------------------------

-- name: durations
SELECT kind, bucket, weight FROM durations ORDER BY kind, bucket;

-- name: scale_durations
UPDATE durations SET weight = weight * :factor WHERE kind = :kind;

-- name: store_pause
-- A pause never shortens one already stored under its key.
INSERT INTO pauses (key, reason, until, kind, project)
VALUES (:key, :reason, :until, :kind, :project)
ON CONFLICT (key) DO UPDATE
   SET reason = excluded.reason, kind = excluded.kind, project = excluded.project,
       until = CASE WHEN pauses.until > excluded.until THEN pauses.until ELSE excluded.until END;

-- name: delete_pause
DELETE FROM pauses WHERE key = :key;

-- name: pause_kind
SELECT kind FROM pauses WHERE key = :key;

-- name: ensure_pause_clock
-- The (project, kind) row writers lock, made the first time the project takes a pause.
INSERT INTO pause_clock (project, kind) VALUES (:project, :kind)
ON CONFLICT (project, kind) DO NOTHING;

-- name: open_pause_clock
-- The (project, kind)'s paused span, opened or widened (see pause_clock in migrations 003
-- and 007).
INSERT INTO pause_clock (project, kind, since, until) VALUES (:project, :kind, :since, :until)
ON CONFLICT (project, kind) DO UPDATE SET since = excluded.since, until = excluded.until;

-- name: settle_pause_clock
-- A paused span that has ended moves the deadline of every tracking job of its project
-- and kind that it held: by the part of the span after the job registered. A job already
-- past its deadline when the span began was not held by it.
UPDATE jobs
   SET deadline_at = deadline_at + (CAST(:until AS double precision)
                     - CASE WHEN created_at > :since THEN created_at ELSE :since END)
 WHERE project = :project AND kind = :kind AND state = 'tracking' AND created_at < :until
   AND deadline_at > :since;

-- name: close_pause_clock
UPDATE pause_clock SET since = NULL, until = NULL WHERE project = :project AND kind = :kind;

-- name: pauses
SELECT key, reason, until, kind, project FROM pauses ORDER BY key;

-- -- leases --------------------------------------------------------------------------------

-- name: release_watches
-- Leases sit only on live work (see record_watch): the partial indexes of the claims find
-- them without reading the whole tables.
UPDATE watches SET lease_owner = NULL, lease_until = NULL
 WHERE lease_owner = :owner AND next_poll_at IS NOT NULL;

-- name: release_jobs
UPDATE jobs SET lease_owner = NULL, lease_until = NULL
 WHERE lease_owner = :owner AND state = 'delivering';
