-- Full-text search over room messages (content.body), names and topics: the searchable text
-- of each event with its tsvector (the language-neutral 'simple' configuration) and a GIN index.
CREATE TABLE event_search (
    event_id TEXT PRIMARY KEY NOT NULL,
    room_id  TEXT NOT NULL,
    -- content.body, content.name or content.topic.
    key      TEXT NOT NULL,
    body     TEXT NOT NULL,
    vector   TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
CREATE INDEX event_search_room ON event_search (room_id);
INSERT INTO event_search (event_id, room_id, key, body)
    SELECT event_id, room_id, 'content.body', json::jsonb -> 'content' ->> 'body' FROM events
    WHERE event_type = 'm.room.message' AND NOT outlier AND NOT soft_failed
      AND redacted_by IS NULL AND strpos(json, '\u0000') = 0
      AND jsonb_typeof(json::jsonb -> 'content' -> 'body') = 'string';
