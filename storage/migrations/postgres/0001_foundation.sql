-- Foundation schema (PostgreSQL). Every row that belongs to a territory names it.
-- Timestamps are milliseconds since the Unix epoch (Matrix's unit).

CREATE TABLE territories (
    code        TEXT PRIMARY KEY NOT NULL,
    server_name TEXT NOT NULL UNIQUE,
    created_ts  BIGINT NOT NULL
);

CREATE TABLE accounts (
    user_id        TEXT PRIMARY KEY NOT NULL,
    territory      TEXT NOT NULL REFERENCES territories (code),
    localpart      TEXT NOT NULL,
    password_hash  TEXT,
    is_admin       BOOLEAN NOT NULL DEFAULT FALSE,
    is_guest       BOOLEAN NOT NULL DEFAULT FALSE,
    created_ts     BIGINT NOT NULL,
    deactivated_ts BIGINT,
    UNIQUE (territory, localpart)
);

CREATE TABLE devices (
    user_id      TEXT NOT NULL REFERENCES accounts (user_id),
    device_id    TEXT NOT NULL,
    territory    TEXT NOT NULL REFERENCES territories (code),
    display_name TEXT,
    created_ts   BIGINT NOT NULL,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Only a SHA-256 digest of each token is stored: a copy of the database does not log anyone in.
CREATE TABLE access_tokens (
    token_hash   BYTEA PRIMARY KEY NOT NULL,
    territory    TEXT NOT NULL REFERENCES territories (code),
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    created_ts   BIGINT NOT NULL,
    expires_ts   BIGINT,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id)
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

-- Public halves of each territory's own signing keys, current and retired
-- (retired keys are served as old_verify_keys).
CREATE TABLE signing_keys (
    territory  TEXT NOT NULL REFERENCES territories (code),
    key_id     TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    expired_ts BIGINT,
    PRIMARY KEY (territory, key_id)
);

-- Verify keys of other servers, fetched directly or through notaries.
CREATE TABLE remote_server_keys (
    server_name    TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    public_key     TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    expired_ts     BIGINT,
    fetched_ts     BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
