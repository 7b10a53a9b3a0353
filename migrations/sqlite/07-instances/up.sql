-- Instances sharing the database, each alive while its heartbeat is fresh,
-- and which one runs a job: a job whose instance died goes back to the
-- queue once its heartbeat is stale, not a day later.
CREATE TABLE instances (
    id            TEXT    PRIMARY KEY,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL
);
ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
-- A token refresh under way, so other instances wait for its outcome
-- instead of spending the same refresh token.
ALTER TABLE strava_tokens ADD COLUMN refreshing_by TEXT;
ALTER TABLE strava_tokens ADD COLUMN refreshing_since INTEGER;
