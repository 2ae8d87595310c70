-- The rows waiting for the full-text index are the event_search rows after a watermark
-- (search_indexed.upto) instead of a list of their own: a message's commit no longer writes a
-- page of that list (each page a commit touches costs about 8.5 us here). Positions are given
-- out in commit order, so a new row lands after the watermark; a row that lands at or before
-- it (history: a backfilled or promoted event) goes into the index at once.
INSERT INTO event_search_fts (rowid, body)
    SELECT s.stream_ordering, s.body FROM search_pending p
    JOIN event_search s ON s.stream_ordering = p.stream_ordering;
DROP TRIGGER event_search_added;
DROP TRIGGER event_search_removed;
DROP TABLE search_pending;
CREATE TABLE search_indexed (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    upto INTEGER NOT NULL
);
INSERT INTO search_indexed (id, upto)
    SELECT 1, COALESCE(MAX(stream_ordering), 0) FROM event_search;
CREATE TRIGGER event_search_added AFTER INSERT ON event_search
    WHEN new.stream_ordering <= (SELECT upto FROM search_indexed) BEGIN
    INSERT INTO event_search_fts (rowid, body) VALUES (new.stream_ordering, new.body);
END;
-- A row after the watermark is not in the index yet: removing it from the index would corrupt
-- the index.
CREATE TRIGGER event_search_removed AFTER DELETE ON event_search
    WHEN old.stream_ordering <= (SELECT upto FROM search_indexed) BEGIN
    INSERT INTO event_search_fts (event_search_fts, rowid, body)
        VALUES ('delete', old.stream_ordering, old.body);
END;
