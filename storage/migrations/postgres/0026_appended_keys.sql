-- event_edges in (room, depth) order, as on SQLite: a room's new events have the highest
-- depths, so a batch's edges go to the end of the room's range of the key instead of one
-- random B-tree page per event (each a page written to the WAL, whole after a checkpoint).
-- event_search stays keyed by event ID here: its GIN index, not the key, is the large part.
ALTER TABLE event_edges ADD COLUMN depth BIGINT NOT NULL DEFAULT 0;
UPDATE event_edges ed SET depth = e.depth FROM events e WHERE e.event_id = ed.event_id;
ALTER TABLE event_edges ALTER COLUMN depth DROP DEFAULT;
ALTER TABLE event_edges DROP CONSTRAINT event_edges_pkey;
ALTER TABLE event_edges ADD PRIMARY KEY (room_id, depth, event_id, prev_event_id);
