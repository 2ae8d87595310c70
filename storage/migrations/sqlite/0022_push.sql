-- Push: what the push rules said about each event (unread counts, /notifications), the users'
-- pushers, and the durable queue of notifications for push gateways.
--
-- One verdict per event holds for every local member whose rules give the same answer as the
-- default rules for an unnamed member (most members, most events); only a member whose verdict
-- differs (a mention, an invite, rules of their own) gets a row in event_push_exceptions. A
-- member's verdict is their exception, else the event's. Events are named by stream position
-- (their IDs and times are in `events`).
CREATE TABLE event_push (
    room_id         TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    -- The sender's own events never count for them.
    sender          TEXT NOT NULL,
    -- The thread root for events in a thread ('' for the main timeline).
    thread_id       TEXT NOT NULL DEFAULT '',
    -- The actions contain "notify" / a highlight tweak.
    notify          INTEGER NOT NULL,
    highlight       INTEGER NOT NULL,
    -- JSON array of the matched rule's actions.
    actions         TEXT NOT NULL,
    PRIMARY KEY (room_id, stream_ordering)
) WITHOUT ROWID;

-- Threads' events alone (thread counts look only at them).
CREATE INDEX event_push_threads ON event_push (room_id, thread_id, stream_ordering)
    WHERE thread_id <> '';

CREATE TABLE event_push_exceptions (
    user_id         TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    notify          INTEGER NOT NULL,
    highlight       INTEGER NOT NULL,
    actions         TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_ordering)
) WITHOUT ROWID;

-- How far the push worker has evaluated the event stream (one row).
CREATE TABLE push_position (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);

CREATE TABLE pushers (
    user_id             TEXT NOT NULL,
    app_id              TEXT NOT NULL,
    pushkey             TEXT NOT NULL,
    kind                TEXT NOT NULL,
    app_display_name    TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag         TEXT,
    lang                TEXT NOT NULL,
    -- JSON object (url, format and the client's own keys).
    data                TEXT NOT NULL,
    -- The device that set it: the pusher goes when the device does.
    device_id           TEXT,
    created_ts          INTEGER NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_key ON pushers (app_id, pushkey);

-- Notifications waiting for their push gateway's 200; retried with backoff.
CREATE TABLE push_queue (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         TEXT NOT NULL,
    app_id          TEXT NOT NULL,
    pushkey         TEXT NOT NULL,
    url             TEXT NOT NULL,
    -- The request body (JSON) for /_matrix/push/v1/notify.
    body            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ts INTEGER NOT NULL,
    created_ts      INTEGER NOT NULL
);
CREATE INDEX push_queue_due ON push_queue (next_attempt_ts, id);

-- The push worker follows the whole stream in order.
CREATE INDEX events_stream ON events (stream_ordering);
