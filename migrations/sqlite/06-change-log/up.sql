-- Every change to what an athlete can read, appended in the transaction that
-- makes it. The change feed reads it by cursor (the id) and the application's
-- events are delivered from it, in order per athlete. No foreign key: an
-- athlete's `athlete.deauthorized` outlives the athlete it announces. Ids
-- are rowids without AUTOINCREMENT (which costs a second write per change):
-- an id could only come back if the newest change were deleted, and pruning
-- always keeps it.
CREATE TABLE changes (
    id              INTEGER PRIMARY KEY,
    athlete_id      INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    activity_id     INTEGER,
    occurred_at     INTEGER NOT NULL,
    delivery        TEXT NOT NULL DEFAULT 'pending'
                    CHECK (delivery IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    -- When retrying began: the change, or the operator's replay.
    retry_from      INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX changes_by_athlete ON changes(athlete_id, id);
CREATE INDEX changes_undelivered ON changes(athlete_id, id) WHERE delivery = 'pending';
CREATE INDEX changes_failed ON changes(id) WHERE delivery = 'failed';
