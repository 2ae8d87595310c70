-- Rooms and their event graph (PostgreSQL).
--
-- State is stored as deltas: a state group is its parent group plus the slots it changes, so a
-- state event costs one group row and one delta row, and a message costs none.

CREATE TABLE rooms (
    room_id             TEXT PRIMARY KEY NOT NULL,
    room_version        TEXT NOT NULL,
    created_ts          BIGINT NOT NULL,
    -- JSON array of event IDs: the events with no children yet.
    forward_extremities TEXT NOT NULL,
    -- State after the forward extremities.
    current_state_group BIGINT
);

CREATE TABLE events (
    event_id           TEXT PRIMARY KEY NOT NULL,
    room_id            TEXT NOT NULL,
    -- Position in this server's stream; NULL for outliers and soft-failed events.
    stream_ordering    BIGINT,
    event_type         TEXT NOT NULL,
    state_key          TEXT,
    sender             TEXT NOT NULL,
    depth              BIGINT NOT NULL,
    origin_server_ts   BIGINT NOT NULL,
    -- The full event, canonical JSON, as signed.
    json               TEXT NOT NULL,
    state_group_before BIGINT,
    state_group_after  BIGINT,
    outlier            BOOLEAN NOT NULL DEFAULT FALSE,
    soft_failed        BOOLEAN NOT NULL DEFAULT FALSE,
    redacted_by        TEXT
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);

CREATE TABLE event_edges (
    event_id      TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);

CREATE TABLE state_groups (
    id         BIGINT PRIMARY KEY NOT NULL,
    room_id    TEXT NOT NULL,
    prev_group BIGINT
);

-- event_id NULL: the slot is removed (state resolution may drop a slot one fork had).
CREATE TABLE state_group_deltas (
    state_group BIGINT NOT NULL,
    event_type  TEXT NOT NULL,
    state_key   TEXT NOT NULL,
    event_id    TEXT,
    PRIMARY KEY (state_group, event_type, state_key)
);
