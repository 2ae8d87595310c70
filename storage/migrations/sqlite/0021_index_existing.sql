-- Index what was stored before search and relations existed: room names and topics (0018
-- indexed message bodies), and the relations of timeline events.
INSERT INTO event_search (event_id, room_id, key, body)
    SELECT event_id, room_id,
           CASE event_type WHEN 'm.room.name' THEN 'content.name' ELSE 'content.topic' END,
           CASE event_type WHEN 'm.room.name' THEN json_extract(json, '$.content.name')
                           ELSE json_extract(json, '$.content.topic') END
    FROM events
    WHERE event_type IN ('m.room.name', 'm.room.topic') AND outlier = 0 AND soft_failed = 0
      AND redacted_by IS NULL
      AND json_type(json, CASE event_type WHEN 'm.room.name' THEN '$.content.name'
                                          ELSE '$.content.topic' END) = 'text'
    ON CONFLICT (event_id) DO NOTHING;
INSERT INTO event_relations (event_id, room_id, relates_to, rel_type, event_type, sender, stream_ordering)
    SELECT event_id, room_id,
           json_extract(json, '$.content."m.relates_to".event_id'),
           json_extract(json, '$.content."m.relates_to".rel_type'),
           event_type, sender, stream_ordering
    FROM events
    WHERE stream_ordering IS NOT NULL AND outlier = 0 AND soft_failed = 0 AND redacted_by IS NULL
      AND json_type(json, '$.content."m.relates_to".event_id') = 'text'
      AND json_type(json, '$.content."m.relates_to".rel_type') = 'text'
    ON CONFLICT (event_id) DO NOTHING;
