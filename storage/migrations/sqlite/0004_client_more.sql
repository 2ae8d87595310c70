-- More client API state (SQLite): account data, receipts, media, aliases, the room directory.
-- `aux_position` orders changes that are not room events (account data, receipts) for /sync.

CREATE TABLE account_data (
    user_id      TEXT NOT NULL,
    -- '' for global account data.
    room_id      TEXT NOT NULL,
    data_type    TEXT NOT NULL,
    content      TEXT NOT NULL,
    aux_position INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);

CREATE TABLE receipts (
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    -- '' for unthreaded receipts.
    thread_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    ts           INTEGER NOT NULL,
    aux_position INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_room_position ON receipts (room_id, aux_position);

CREATE TABLE media (
    media_id     TEXT PRIMARY KEY NOT NULL,
    territory    TEXT NOT NULL,
    uploader     TEXT NOT NULL,
    content_type TEXT,
    filename     TEXT,
    size         INTEGER NOT NULL,
    created_ts   INTEGER NOT NULL
);

CREATE TABLE room_aliases (
    alias      TEXT PRIMARY KEY NOT NULL,
    room_id    TEXT NOT NULL,
    creator    TEXT NOT NULL,
    created_ts INTEGER NOT NULL
);

CREATE TABLE room_directory (
    room_id    TEXT PRIMARY KEY NOT NULL,
    visibility TEXT NOT NULL
);
