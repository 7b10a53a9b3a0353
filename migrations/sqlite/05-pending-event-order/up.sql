-- The worker takes pending events in event_time order, at most the earliest
-- per object. Indexing only the pending rows, in that order, lets each batch
-- stop after its limit instead of sorting the whole backlog, and lets the
-- "earlier pending event of the same object" check skip settled events.
CREATE INDEX webhook_events_pending ON webhook_events(event_time, id)
    WHERE status = 'pending';
CREATE INDEX webhook_events_pending_object ON webhook_events(object_type, object_id, event_time, id)
    WHERE status = 'pending';
