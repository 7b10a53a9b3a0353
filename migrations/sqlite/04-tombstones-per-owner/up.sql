-- A tombstone belongs to the athlete whose delete event left it: an event
-- naming one athlete must never keep another athlete's activity deleted.
CREATE TABLE activity_tombstones_by_owner (
    athlete_id    INTEGER NOT NULL,
    id            INTEGER NOT NULL,                 -- Strava activity id
    event_time    INTEGER NOT NULL,
    PRIMARY KEY (athlete_id, id)
) WITHOUT ROWID;
INSERT INTO activity_tombstones_by_owner (athlete_id, id, event_time)
    SELECT athlete_id, id, event_time FROM activity_tombstones;
DROP TABLE activity_tombstones;
ALTER TABLE activity_tombstones_by_owner RENAME TO activity_tombstones;
