-- Strava's retries collapse on the dedup key, a hash. Indexed alone, every
-- new event landed on a random page of an index as large as the inbox.
-- Keyed by event time first, new events land together at the index's end;
-- the key holds the event time, so what is unique is unchanged.
ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_dedup_key_key;
CREATE UNIQUE INDEX webhook_events_dedup ON webhook_events(event_time, dedup_key);
