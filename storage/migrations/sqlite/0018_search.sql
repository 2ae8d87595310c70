-- Full-text search over room messages (content.body), names and topics: the searchable text
-- of each event, and an FTS5 index over it kept in step by triggers.
CREATE TABLE event_search (
    event_id TEXT PRIMARY KEY NOT NULL,
    room_id  TEXT NOT NULL,
    -- content.body, content.name or content.topic.
    key      TEXT NOT NULL,
    body     TEXT NOT NULL
);
CREATE VIRTUAL TABLE event_search_fts USING fts5(
    body, content='event_search', content_rowid='rowid', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER event_search_added AFTER INSERT ON event_search BEGIN
    INSERT INTO event_search_fts (rowid, body) VALUES (new.rowid, new.body);
END;
CREATE TRIGGER event_search_removed AFTER DELETE ON event_search BEGIN
    INSERT INTO event_search_fts (event_search_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
END;
INSERT INTO event_search (event_id, room_id, key, body)
    SELECT event_id, room_id, 'content.body', json_extract(json, '$.content.body') FROM events
    WHERE event_type = 'm.room.message' AND outlier = 0 AND soft_failed = 0
      AND redacted_by IS NULL AND json_type(json, '$.content.body') = 'text';
