-- Index what was stored before search and relations existed: room names and topics (0018
-- indexed message bodies), and the relations of timeline events. Events whose JSON holds
-- \u0000 are left out (jsonb and text cannot hold it).
INSERT INTO event_search (event_id, room_id, key, body)
    SELECT event_id, room_id,
           CASE event_type WHEN 'm.room.name' THEN 'content.name' ELSE 'content.topic' END,
           json::jsonb -> 'content' ->> (CASE event_type WHEN 'm.room.name' THEN 'name' ELSE 'topic' END)
    FROM events
    WHERE event_type IN ('m.room.name', 'm.room.topic') AND NOT outlier AND NOT soft_failed
      AND redacted_by IS NULL AND strpos(json, '\u0000') = 0
      AND jsonb_typeof(json::jsonb -> 'content'
                       -> (CASE event_type WHEN 'm.room.name' THEN 'name' ELSE 'topic' END)) = 'string'
    ON CONFLICT (event_id) DO NOTHING;
INSERT INTO event_relations (event_id, room_id, relates_to, rel_type, event_type, sender, stream_ordering)
    SELECT event_id, room_id,
           json::jsonb -> 'content' -> 'm.relates_to' ->> 'event_id',
           json::jsonb -> 'content' -> 'm.relates_to' ->> 'rel_type',
           event_type, sender, stream_ordering
    FROM events
    WHERE stream_ordering IS NOT NULL AND NOT outlier AND NOT soft_failed AND redacted_by IS NULL
      AND strpos(json, '\u0000') = 0
      AND jsonb_typeof(json::jsonb -> 'content' -> 'm.relates_to' -> 'event_id') = 'string'
      AND jsonb_typeof(json::jsonb -> 'content' -> 'm.relates_to' -> 'rel_type') = 'string'
    ON CONFLICT (event_id) DO NOTHING;
