-- Fewer pages written per event (each page a commit touches is a WAL frame, and again a page
-- the checkpoint copies).
--
-- event_edges was a rowid table plus the index of its primary key: two B-trees for the same
-- two columns. WITHOUT ROWID it is stored once, in its key's order (the edges are only ever
-- written, and checked against that key on insert).
CREATE TABLE event_edges_keyed (
    event_id      TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
) WITHOUT ROWID;
INSERT INTO event_edges_keyed (event_id, prev_event_id, room_id)
    SELECT event_id, prev_event_id, room_id FROM event_edges;
DROP TABLE event_edges;
ALTER TABLE event_edges_keyed RENAME TO event_edges;

-- events_membership serves lookups by state key (a user's membership events): messages, most
-- of the events, have none and need no entry. `state_key = ?` implies the condition, so those
-- queries keep the index.
DROP INDEX events_membership;
CREATE INDEX events_membership ON events (state_key, event_type) WHERE state_key IS NOT NULL;
