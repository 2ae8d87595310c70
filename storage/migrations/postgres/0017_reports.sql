-- Reports of events, rooms and users by our users, kept for the node's admins
-- (`unitas reports`).
CREATE TABLE reports (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 'event', 'room' or 'user'.
    kind       TEXT NOT NULL,
    reporter   TEXT NOT NULL,
    room_id    TEXT,
    event_id   TEXT,
    user_id    TEXT,
    reason     TEXT,
    created_ts BIGINT NOT NULL
);
