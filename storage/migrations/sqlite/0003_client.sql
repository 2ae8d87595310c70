-- Client API state (SQLite): profiles, transaction IDs, filters.

CREATE TABLE profiles (
    user_id     TEXT PRIMARY KEY NOT NULL,
    displayname TEXT,
    avatar_url  TEXT
);

-- Idempotent sends: the event a (user, device, transaction ID) produced.
CREATE TABLE transaction_ids (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE filters (
    user_id   TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    json      TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

-- Finding a user's rooms: their membership events.
CREATE INDEX events_membership ON events (state_key, event_type);
