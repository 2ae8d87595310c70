-- Keys that grow with the stream instead of random event IDs. A batch of events inserted under
-- a random key touches one leaf page per event in that B-tree (each page a WAL frame, then a
-- page the checkpoint copies); under a key that grows it touches the last page or two. These
-- two B-trees were two thirds of the bytes written by the inbound bench.
--
-- event_edges in (room, depth) order: a room's new events have the highest depths, so its edges
-- go to the end of its range. The key still holds the event and its parent (duplicates stay
-- out; the key is fixed by the event ID).
CREATE TABLE event_edges_by_depth (
    room_id       TEXT NOT NULL,
    depth         INTEGER NOT NULL,
    event_id      TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, depth, event_id, prev_event_id)
) WITHOUT ROWID;
INSERT INTO event_edges_by_depth (room_id, depth, event_id, prev_event_id)
    SELECT ed.room_id, COALESCE(e.depth, 0), ed.event_id, ed.prev_event_id
    FROM event_edges ed LEFT JOIN events e ON e.event_id = ed.event_id;
DROP TABLE event_edges;
ALTER TABLE event_edges_by_depth RENAME TO event_edges;

-- event_search keyed by the event's stream position (its rowid, which the FTS index refers
-- to), not by event ID: searchable events are timeline events, which always have one. A
-- redaction finds the row through the event's position; searches join events on it.
DROP TRIGGER event_search_added;
DROP TRIGGER event_search_removed;
DROP TABLE event_search_fts;
CREATE TABLE event_search_by_position (
    stream_ordering INTEGER PRIMARY KEY NOT NULL,
    event_id        TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    -- content.body, content.name or content.topic.
    key             TEXT NOT NULL,
    body            TEXT NOT NULL
);
INSERT INTO event_search_by_position (stream_ordering, event_id, room_id, key, body)
    SELECT e.stream_ordering, s.event_id, s.room_id, s.key, s.body
    FROM event_search s JOIN events e ON e.event_id = s.event_id
    WHERE e.stream_ordering IS NOT NULL;
DROP TABLE event_search;
ALTER TABLE event_search_by_position RENAME TO event_search;
CREATE VIRTUAL TABLE event_search_fts USING fts5(
    body, content='event_search', content_rowid='stream_ordering',
    tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER event_search_added AFTER INSERT ON event_search BEGIN
    INSERT INTO event_search_fts (rowid, body) VALUES (new.stream_ordering, new.body);
END;
CREATE TRIGGER event_search_removed AFTER DELETE ON event_search BEGIN
    INSERT INTO event_search_fts (event_search_fts, rowid, body)
        VALUES ('delete', old.stream_ordering, old.body);
END;
INSERT INTO event_search_fts (event_search_fts) VALUES ('rebuild');
