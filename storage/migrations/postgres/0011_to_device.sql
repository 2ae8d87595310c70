-- Messages sent straight to a device (to-device events: encryption key sharing, verification).
-- Delivered in sync until the client acknowledges them by syncing from a later token.
CREATE TABLE to_device_inbox (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    -- Aux stream position when it arrived.
    position   BIGINT NOT NULL,
    sender     TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content    TEXT NOT NULL,
    -- Sender device and transaction ID (local) or the EDU's message_id (remote): a message
    -- sent twice is stored once.
    message_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, position),
    UNIQUE (user_id, device_id, sender, message_id)
);

-- Users whose devices or keys changed, by aux position (sync's device_lists.changed).
CREATE TABLE device_list_changes (
    user_id  TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (position, user_id)
);
