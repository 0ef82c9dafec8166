-- The PostgreSQL twin of sql/sqlite/002_learned_durations.sql.
-- When a watch's current round of tracking began: the zero of the poll plan's clock.
-- NULL on watches made before this column: their created_at stands in.
ALTER TABLE watches ADD COLUMN armed_at double precision;

-- How long conversions of each kind take, for the poll plan (bridge/pollplan.py): a
-- histogram over log-spaced buckets of seconds from arming to the finish, fed in the
-- same transaction as the poll that sees a conversion end.
CREATE TABLE durations (
    kind   text             NOT NULL,
    bucket integer          NOT NULL,
    weight double precision NOT NULL,
    PRIMARY KEY (kind, bucket)
)
