-- The whole first schema: every table family SPEC.md describes, so later
-- features extend it instead of redoing it. Times are epoch seconds (UTC).

-- A connected athlete: the profile as Strava last sent it, and the access state.
CREATE TABLE athletes (
    id            INTEGER PRIMARY KEY,              -- Strava athlete id
    profile_json  TEXT    NOT NULL,                 -- as last received, every field kept
    scope         TEXT    NOT NULL,                 -- scopes granted at connect
    status        TEXT    NOT NULL DEFAULT 'connected'
                  CHECK (status IN ('connected', 'needs_reauth')),
    connected_at  INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- Strava's tokens for one athlete. The refresh token is rotated by Strava and
-- the newest must be committed before it is used.
CREATE TABLE strava_tokens (
    athlete_id    INTEGER PRIMARY KEY REFERENCES athletes(id) ON DELETE CASCADE,
    access_token  TEXT    NOT NULL,
    refresh_token TEXT    NOT NULL,
    expires_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- Our own bearer tokens for the read API, stored only as SHA-256 hashes.
CREATE TABLE api_tokens (
    token_hash    BLOB    PRIMARY KEY,
    athlete_id    INTEGER NOT NULL REFERENCES athletes(id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER
) WITHOUT ROWID;
CREATE INDEX api_tokens_athlete ON api_tokens(athlete_id);

-- OAuth `state` values: single use, short-lived.
CREATE TABLE oauth_states (
    state         TEXT    PRIMARY KEY,
    expires_at    INTEGER NOT NULL
) WITHOUT ROWID;

-- Activities exactly as Strava returned them. The typed columns are derived
-- from the JSON by SQLite itself, so they can never drift from what is served.
CREATE TABLE activities (
    id               INTEGER PRIMARY KEY,           -- Strava activity id (64-bit)
    athlete_id       INTEGER NOT NULL REFERENCES athletes(id) ON DELETE CASCADE,
    summary_json     TEXT    NOT NULL,              -- SummaryActivity (resource_state 2)
    detail_json      TEXT,                          -- DetailedActivity (resource_state 3) once fetched
    detail_fetched_at INTEGER,
    needs_refresh    INTEGER NOT NULL DEFAULT 0,    -- an update event changed it; refetch when idle
    last_event_time  INTEGER,                       -- newest webhook event applied to it
    last_seen_at     INTEGER NOT NULL,              -- last time Strava listed or returned it
    updated_at       INTEGER NOT NULL,
    start_time       INTEGER NOT NULL
        GENERATED ALWAYS AS (unixepoch(json_extract(summary_json, '$.start_date'))) STORED,
    activity_type    TEXT GENERATED ALWAYS AS (json_extract(summary_json, '$.type')) STORED,
    sport_type       TEXT GENERATED ALWAYS AS (json_extract(summary_json, '$.sport_type')) STORED,
    distance         REAL GENERATED ALWAYS AS (json_extract(summary_json, '$.distance')) STORED,
    moving_time      INTEGER GENERATED ALWAYS AS (json_extract(summary_json, '$.moving_time')) STORED,
    elapsed_time     INTEGER GENERATED ALWAYS AS (json_extract(summary_json, '$.elapsed_time')) STORED,
    elevation_gain   REAL GENERATED ALWAYS AS (json_extract(summary_json, '$.total_elevation_gain')) STORED,
    achievement_count INTEGER GENERATED ALWAYS AS (json_extract(summary_json, '$.achievement_count')) STORED
);
CREATE INDEX activities_athlete_start ON activities(athlete_id, start_time DESC, id DESC);
CREATE INDEX activities_needs_detail ON activities(detail_json IS NULL, start_time DESC);

-- Activities deleted by a webhook event: a late create must not resurrect them.
CREATE TABLE activity_tombstones (
    id            INTEGER PRIMARY KEY,              -- Strava activity id
    athlete_id    INTEGER NOT NULL,
    event_time    INTEGER NOT NULL
);
CREATE INDEX activity_tombstones_athlete ON activity_tombstones(athlete_id);

-- The webhook inbox: every acknowledged event is committed here before the 200.
CREATE TABLE webhook_events (
    id             INTEGER PRIMARY KEY,
    dedup_key      TEXT    NOT NULL UNIQUE,         -- Strava retries and duplicate creates collapse here
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
CREATE INDEX webhook_events_due ON webhook_events(status, next_attempt_at);
CREATE INDEX webhook_events_object ON webhook_events(object_type, object_id, event_time);

-- Background and interactive work that spends the Strava budget.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY,
    athlete_id    INTEGER NOT NULL REFERENCES athletes(id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL,                 -- see sync::JobKind
    priority      INTEGER NOT NULL,                 -- lower runs first (strava::Purpose)
    status        TEXT    NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'running', 'done', 'failed')),
    payload_json  TEXT,
    not_before    INTEGER NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0,
    fetched       INTEGER NOT NULL DEFAULT 0,
    new           INTEGER NOT NULL DEFAULT 0,
    updated       INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER
);
CREATE INDEX jobs_queue ON jobs(status, priority, not_before, id);
CREATE INDEX jobs_athlete ON jobs(athlete_id, status);

-- Per-athlete sync progress; cursors survive restarts and budget pauses.
CREATE TABLE sync_state (
    athlete_id            INTEGER PRIMARY KEY REFERENCES athletes(id) ON DELETE CASCADE,
    backfill_before       INTEGER,                  -- next backfill page lists activities before this
    backfill_pages        INTEGER NOT NULL DEFAULT 0,
    backfill_complete     INTEGER NOT NULL DEFAULT 0,
    last_gap_fill_at      INTEGER,
    last_webhook_at       INTEGER,
    last_reconcile_at     INTEGER,
    reconcile_cursor      INTEGER,                  -- reconciliation resumes from here
    last_manual_refresh_at INTEGER
);

-- The shared budget's counters, one row per window instance ('15min' or 'day').
CREATE TABLE budget_windows (
    window          TEXT    NOT NULL CHECK (window IN ('15min', 'day')),
    window_start    INTEGER NOT NULL,
    used            INTEGER NOT NULL DEFAULT 0,     -- our count, corrected upward by Strava's
    reported_usage  INTEGER,                        -- as last reported by Strava's headers
    reported_limit  INTEGER,
    exhausted       INTEGER NOT NULL DEFAULT 0,     -- a 429 was seen: send nothing until reset
    PRIMARY KEY (window, window_start)
) WITHOUT ROWID;

-- The ledger: one row per call to Strava.
CREATE TABLE strava_calls (
    id            INTEGER PRIMARY KEY,
    at            INTEGER NOT NULL,
    endpoint      TEXT    NOT NULL,
    athlete_id    INTEGER,
    purpose       TEXT    NOT NULL,
    status        INTEGER,                          -- HTTP status; NULL when no answer came
    usage_15min   INTEGER,
    usage_daily   INTEGER,
    duration_ms   INTEGER
);
CREATE INDEX strava_calls_at ON strava_calls(at);

-- Small service-wide facts: webhook path secret, subscription id, paused flag.
CREATE TABLE service_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
