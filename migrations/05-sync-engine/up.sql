-- The sync engine's bookkeeping on top of 01-initial.

-- Deletion reconciliation is a mark-and-sweep over an athlete's whole list:
-- every activity Strava lists during the pass gets last_seen_at >= the pass
-- start, so what is older than the pass start once the pass ends is gone on
-- Strava. The pass start must survive restarts together with the cursor.
ALTER TABLE sync_state ADD COLUMN reconcile_pass_started_at INTEGER;

-- The sweep: an athlete's activities not seen since the pass started.
CREATE INDEX activities_athlete_seen ON activities(athlete_id, last_seen_at);

-- Enrichment picks the newest summary-only activities across all athletes.
CREATE INDEX activities_summary_only ON activities(start_time DESC) WHERE detail_json IS NULL;
