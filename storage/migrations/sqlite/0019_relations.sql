-- Relations between events (content.m.relates_to: edits, reactions, references, threads),
-- recorded when a timeline event is stored, for /relations, /threads and bundled summaries.
CREATE TABLE event_relations (
    event_id        TEXT PRIMARY KEY NOT NULL,
    room_id         TEXT NOT NULL,
    relates_to      TEXT NOT NULL,
    rel_type        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    sender          TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL
);
CREATE INDEX event_relations_target ON event_relations (relates_to, rel_type, stream_ordering);
CREATE INDEX event_relations_threads ON event_relations (room_id, rel_type, stream_ordering);
