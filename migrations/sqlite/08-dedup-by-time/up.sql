-- Strava's retries collapse on the dedup key, a hash. Indexed alone, every
-- new event landed on a random page of an index as large as the inbox, so
-- each group commit rewrote about as many pages as it held events. Keyed
-- by event time first, new events land together at the index's end; the key
-- holds the event time, so what is unique is unchanged.
-- SQLite cannot drop a column's UNIQUE constraint: the table is rebuilt.
CREATE TABLE webhook_events_new (
    id             INTEGER PRIMARY KEY,
    dedup_key      TEXT    NOT NULL,
    object_type    TEXT    NOT NULL,
    object_id      INTEGER NOT NULL,
    aspect_type    TEXT    NOT NULL,
    owner_id       INTEGER NOT NULL,
    event_time     INTEGER NOT NULL,
    updates_json   TEXT    NOT NULL,
    received_at    INTEGER NOT NULL,
    status         TEXT    NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'done', 'ignored', 'failed')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error     TEXT,
    applied_at     INTEGER
);
INSERT INTO webhook_events_new SELECT * FROM webhook_events;
DROP TABLE webhook_events;
ALTER TABLE webhook_events_new RENAME TO webhook_events;
CREATE UNIQUE INDEX webhook_events_dedup ON webhook_events(event_time, dedup_key);
CREATE INDEX webhook_events_due ON webhook_events(status, next_attempt_at);
CREATE INDEX webhook_events_object ON webhook_events(object_type, object_id, event_time);
CREATE INDEX webhook_events_pending ON webhook_events(event_time, id)
    WHERE status = 'pending';
CREATE INDEX webhook_events_pending_object ON webhook_events(object_type, object_id, event_time, id)
    WHERE status = 'pending';
