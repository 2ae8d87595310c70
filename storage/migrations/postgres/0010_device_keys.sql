-- End-to-end encryption keys of our users' devices, as the clients uploaded them (signed JSON;
-- the server relays them and never needs to read inside).
CREATE TABLE device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys: each is handed out once (/keys/claim deletes it).
CREATE TABLE one_time_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

-- Fallback keys: one per device and algorithm, handed out when the one-time keys run out, and
-- marked used (not deleted) when they are.
CREATE TABLE fallback_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    used      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- A per-user counter that grows whenever the user's device list or keys change (the
-- `stream_id` of /user/devices and of device list updates).
CREATE TABLE device_list_versions (
    user_id TEXT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL
);
