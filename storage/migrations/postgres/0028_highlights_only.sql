-- The highlight index holds highlights only: a verdict that does not highlight (nearly every
-- one) writes no page of it, and most commits of a busy room carry verdicts. The count names
-- the index's condition word for word (`highlight = TRUE`): SQLite takes a partial index only
-- for a query that repeats its condition, and keeps `highlight` as a key column to match it.
DROP INDEX event_push_highlights;
CREATE INDEX event_push_highlights
    ON event_push (room_id, highlight, stream_ordering, sender, notify, thread_id)
    WHERE highlight = TRUE;
