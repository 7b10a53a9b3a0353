-- Spending the budget where it is seen: when an athlete's API token was last
-- used (written in batches, never once per read), and their tier.
ALTER TABLE athletes ADD COLUMN last_read_at INTEGER;
-- NULL: the default tier of `TIERS` (or `DEFAULT_TIER`).
ALTER TABLE athletes ADD COLUMN tier TEXT;

-- The tiers configured at start (`TIERS`), so the queue can weigh jobs in SQL.
CREATE TABLE tier_weights (
    name        TEXT    PRIMARY KEY,
    weight      INTEGER NOT NULL CHECK (weight > 0),
    is_default  INTEGER NOT NULL DEFAULT 0
);

-- A purpose for the fetches of athletes who are looking (`attention`) now
-- ranks right after interactive: every rank below moves down by one.
UPDATE jobs SET priority = priority + 1 WHERE priority >= 1;
