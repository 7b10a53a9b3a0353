-- An enrichment job now carries a list of activities, like a webhook fetch,
-- so that planning several for one athlete merges instead of losing all but
-- the first.
UPDATE jobs
SET payload_json = json_object('activity_ids', json_array(json_extract(payload_json, '$.activity_id')))
WHERE kind = 'enrich' AND json_extract(payload_json, '$.activity_id') IS NOT NULL;
