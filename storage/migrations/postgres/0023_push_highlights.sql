-- A room's highlight count reads the events whose verdict for everyone is a highlight (an
-- @room mention, say) and the user's own exceptions, never every event since the user's
-- receipt. The index covers what that count reads (SQLite's planner prefers the primary key's
-- range over an index it would have to look rows up from).
CREATE INDEX event_push_highlights
    ON event_push (room_id, highlight, stream_ordering, sender, notify, thread_id);
