-- When a watch's current round of tracking began: the zero of the poll plan's clock.
-- NULL on watches made before this column: their created_at stands in.
ALTER TABLE watches ADD COLUMN armed_at REAL;

-- How long conversions of each kind take, for the poll plan (bridge/pollplan.py): a
-- histogram over log-spaced buckets of seconds from arming to the finish, fed in the
-- same transaction as the poll that sees a conversion end.
CREATE TABLE durations (
    kind   TEXT    NOT NULL,
    bucket INTEGER NOT NULL,
    weight REAL    NOT NULL,
    PRIMARY KEY (kind, bucket)
)
