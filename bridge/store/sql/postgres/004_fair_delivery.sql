-- The PostgreSQL twin of sql/sqlite/004_fair_delivery.sql.
--
-- The host and port a job's callback goes to (fairness.host_key), fixed at registration,
-- so a claim can leave alone the jobs bound for a host at its cap or behind an open
-- circuit. NULL on jobs registered before this column: claims never skip those (the
-- scheduler gives back any it cannot start).
ALTER TABLE jobs ADD COLUMN callback_host text;
-- When the current round of attempts began: the outcome for the first round, the request
-- for a redelivery. NULL on jobs from before this column: outcome_at stands in.
ALTER TABLE jobs ADD COLUMN round_started_at double precision;
-- Tenants take turns at polls: each owner's most overdue watches, read in due order. A
-- claim changes neither column, so it stays a HOT update.
CREATE INDEX watches_owner_due ON watches (owner, next_poll_at) WHERE next_poll_at IS NOT NULL;
