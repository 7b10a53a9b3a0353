-- Listings for announced activities that did not show them all, counted per
-- athlete: anyone who finds the callback can announce ids Strava does not
-- know, and each such id must not buy another listing. Reset when a listing
-- shows every id it was for. Until `announce_hold_until`, the athlete's next
-- listing for announcements waits.
ALTER TABLE sync_state ADD COLUMN announce_misses BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN announce_hold_until BIGINT;
